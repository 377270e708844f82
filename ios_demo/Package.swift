// swift-tools-version:5.9
// The app-independent core of the iOS demo (manifest, preprocessing, state loop, top-k): Foundation only, so
// `swift test` runs it on macOS or Linux. The SwiftUI app in StexportDemo/ uses it (see README).
import PackageDescription

let package = Package(
    name: "StexportCore",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "StexportCore", targets: ["StexportCore"]),
    ],
    targets: [
        .target(name: "StexportCore", path: "Sources/StexportCore"),
        .testTarget(name: "StexportCoreTests", dependencies: ["StexportCore"], path: "Tests/StexportCoreTests"),
    ]
)
