import SwiftUI

@main
struct StexportDemoApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
