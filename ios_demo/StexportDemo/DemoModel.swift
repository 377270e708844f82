import CoreVideo
import Foundation
import StexportCore

/// Loads the bundle, feeds camera frames through the shared pipeline and publishes what the screen shows.
@MainActor
final class DemoModel: ObservableObject {
    @Published var title = "Loading…"
    @Published var top: [Ranked] = []
    @Published var milliseconds = 0.0
    @Published var meanMilliseconds = 0.0
    @Published var frame = 0
    @Published var message: String?

    let camera = CameraSource()
    private var pipeline: DemoPipeline?

    /// A bundle copied into the app's Documents/bundle (Finder / Files) wins; else the "bundle" folder reference
    /// built into the app (see README).
    static func bundleDirectory() -> URL? {
        let fm = FileManager.default
        if let docs = fm.urls(for: .documentDirectory, in: .userDomainMask).first?.appendingPathComponent("bundle"),
           fm.fileExists(atPath: docs.appendingPathComponent("manifest.json").path) {
            return docs
        }
        if let built = Bundle.main.url(forResource: "bundle", withExtension: nil),
           fm.fileExists(atPath: built.appendingPathComponent("manifest.json").path) {
            return built
        }
        return nil
    }

    func start() {
        guard let dir = Self.bundleDirectory() else {
            title = "No bundle"
            message = "Add an exported Core ML bundle (manifest.json, labels.txt, the .mlpackage) as the app's "
                + "\"bundle\" folder or copy it to Documents/bundle."
            return
        }
        do {
            let manifest = try ModelManifest.parse(Data(contentsOf: dir.appendingPathComponent("manifest.json")))
            let labelsURL = dir.appendingPathComponent(manifest.labelsFile)
            let labels = Labels(text: (try? String(contentsOf: labelsURL, encoding: .utf8)) ?? "")
            let runtime = try CoreMLRuntime(url: dir.appendingPathComponent(manifest.artifactFile), manifest: manifest)
            let pipeline = DemoPipeline(manifest: manifest, runtime: runtime, labels: labels)
            self.pipeline = pipeline
            let p = manifest.preprocessing
            title = "\(manifest.name) · \(p.height)×\(p.width) · \(manifest.states.count) states"
            camera.onFrame = { [weak self] pixels in
                guard let prediction = DemoModel.process(pixels, with: pipeline) else { return }
                Task { @MainActor in self?.show(prediction) }
            }
            try camera.configure()
            camera.start()
        } catch {
            title = "Cannot start"
            message = String(describing: error)
        }
    }

    /// On the camera queue: lock the BGRA buffer and run one frame.
    nonisolated private static func process(_ pixels: CVPixelBuffer, with pipeline: DemoPipeline) -> Prediction? {
        CVPixelBufferLockBaseAddress(pixels, .readOnly)
        defer { CVPixelBufferUnlockBaseAddress(pixels, .readOnly) }
        guard let base = CVPixelBufferGetBaseAddress(pixels) else { return nil }
        let bytes = base.assumingMemoryBound(to: UInt8.self)
        return try? pipeline.onCameraFrame(bgra: bytes, width: CVPixelBufferGetWidth(pixels),
                                           height: CVPixelBufferGetHeight(pixels),
                                           bytesPerRow: CVPixelBufferGetBytesPerRow(pixels))
    }

    private func show(_ p: Prediction) {
        top = p.top
        milliseconds = p.milliseconds
        meanMilliseconds = p.meanMilliseconds
        frame = p.step + 1
    }

    /// Clear every state (the next frame is frame 0); runs between frames on the camera queue.
    func reset() {
        guard let pipeline = pipeline else { return }
        camera.perform { pipeline.reset() }
        top = []
        frame = 0
    }
}
