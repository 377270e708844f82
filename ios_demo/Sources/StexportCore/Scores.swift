import Foundation

/// One row of the top-k list.
public struct Ranked: Identifiable, Equatable {
    public let index: Int
    public let label: String
    public let score: Float
    public var id: Int { index }
}

/// `labels.txt`: line i is class i.
public struct Labels {
    public let names: [String]

    public init(_ names: [String]) { self.names = names }

    public init(text: String) {
        names = text.split(whereSeparator: \.isNewline).map { String($0) }
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }

    public subscript(_ i: Int) -> String { i < names.count ? names[i] : "class_\(i)" }
}

public enum Scores {
    public static func softmax(_ logits: [Float]) -> [Float] {
        let m = logits.max() ?? 0
        let e = logits.map { Double(exp($0 - m)) }
        let s = e.reduce(0, +)
        return e.map { Float($0 / s) }
    }

    /// Indices of the k largest values, largest first (ties: lower index first).
    public static func topK(_ values: [Float], _ k: Int) -> [Int] {
        Array(values.indices.sorted { values[$0] != values[$1] ? values[$0] > values[$1] : $0 < $1 }.prefix(k))
    }

    public static func ranked(_ values: [Float], labels: Labels, k: Int = 5) -> [Ranked] {
        topK(values, k).map { Ranked(index: $0, label: labels[$0], score: values[$0]) }
    }
}

/// Exponential moving average of class probabilities (`alpha` = weight of the newest frame).
public final class Smoother {
    private let alpha: Float
    private var avg: [Float]?

    public init(alpha: Float = 0.3) { self.alpha = alpha }

    public func update(_ p: [Float]) -> [Float] {
        if let a = avg, a.count == p.count {
            avg = zip(a, p).map { $0 + alpha * ($1 - $0) }
        } else {
            avg = p
        }
        return avg ?? p
    }

    public func reset() { avg = nil }
}

/// Keeps every `frame_stride`-th camera frame (the manifest's temporal sampling).
public final class FrameGate {
    private let stride: Int
    private var seen = 0

    public init(stride: Int) { self.stride = max(1, stride) }

    public func accept() -> Bool {
        defer { seen += 1 }
        return seen % stride == 0
    }

    public func reset() { seen = 0 }
}

/// What the screen shows after a frame.
public struct Prediction {
    public let step: Int
    public let top: [Ranked]
    public let milliseconds: Double
    public let meanMilliseconds: Double
}

/// Camera pixels -> top-5: preprocessing per manifest, the shared frame loop, softmax, smoothing, labels.
/// Not thread-safe: call from one capture queue.
public final class DemoPipeline {
    public let manifest: ModelManifest
    public let preprocessor: Preprocessor
    public let session: StreamSession
    private let labels: Labels
    private let smoother: Smoother
    private let gate: FrameGate
    private var times: [Double] = []

    public init(manifest: ModelManifest, runtime: ModelRuntime, labels: Labels, smoothing: Float = 0.3) {
        self.manifest = manifest
        preprocessor = Preprocessor(manifest.preprocessing)
        session = StreamSession(manifest: manifest, runtime: runtime)
        self.labels = labels
        smoother = Smoother(alpha: smoothing)
        gate = FrameGate(stride: manifest.preprocessing.frameStride)
    }

    /// A BGRA camera frame (upright); nil when the manifest's frame_stride skips it.
    public func onCameraFrame(bgra: UnsafePointer<UInt8>, width: Int, height: Int, bytesPerRow: Int) throws -> Prediction? {
        guard gate.accept() else { return nil }
        let rgb = preprocessor.resizeCrop(pixels: bgra, width: width, height: height, bytesPerRow: bytesPerRow,
                                          channels: 4, rgbOffsets: [2, 1, 0])
        return try onModelRGB(rgb)
    }

    /// RGB uint8 HWC already at the model size.
    public func onModelRGB(_ rgb: [UInt8]) throws -> Prediction {
        let r = try session.step(preprocessor.normalize(rgb))
        let probs = smoother.update(Scores.softmax(r.logits))
        times.append(r.milliseconds)
        if times.count > 30 { times.removeFirst() }
        return Prediction(step: r.step, top: Scores.ranked(probs, labels: labels), milliseconds: r.milliseconds,
                          meanMilliseconds: times.reduce(0, +) / Double(times.count))
    }

    public func reset() {
        session.reset()
        smoother.reset()
        gate.reset()
        times = []
    }
}
