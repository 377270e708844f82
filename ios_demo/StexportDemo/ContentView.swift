import AVFoundation
import StexportCore
import SwiftUI
import UIKit

/// Camera preview with the top-5 (smoothed), the time per frame and a Reset button on top.
struct ContentView: View {
    @StateObject private var model = DemoModel()

    var body: some View {
        ZStack(alignment: .bottom) {
            CameraPreview(session: model.camera.session)
                .ignoresSafeArea()
            VStack(alignment: .leading, spacing: 8) {
                Text(model.title).font(.headline)
                if let message = model.message {
                    Text(message).font(.footnote)
                }
                ForEach(model.top) { row in
                    HStack {
                        Text(row.label).lineLimit(1)
                        Spacer()
                        Text(String(format: "%.1f%%", 100 * row.score)).monospacedDigit()
                    }
                    ProgressView(value: Double(row.score))
                }
                HStack {
                    Text(String(format: "%.1f ms / frame (mean %.1f) · frame %d", model.milliseconds,
                                model.meanMilliseconds, model.frame))
                        .font(.footnote).monospacedDigit()
                    Spacer()
                    Button("Reset") { model.reset() }
                        .buttonStyle(.borderedProminent)
                }
            }
            .padding()
            .background(.ultraThinMaterial)
        }
        .onAppear { model.start() }
    }
}

/// AVCaptureVideoPreviewLayer in SwiftUI.
struct CameraPreview: UIViewRepresentable {
    let session: AVCaptureSession

    final class PreviewView: UIView {
        override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }
        var previewLayer: AVCaptureVideoPreviewLayer { layer as! AVCaptureVideoPreviewLayer }
    }

    func makeUIView(context: Context) -> PreviewView {
        let view = PreviewView()
        view.previewLayer.session = session
        view.previewLayer.videoGravity = .resizeAspectFill
        return view
    }

    func updateUIView(_ uiView: PreviewView, context: Context) {}
}
