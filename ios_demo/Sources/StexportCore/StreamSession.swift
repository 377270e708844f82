import Foundation

/// The inference engine behind a session (Core ML in the app, a replay stub in tests): every input by name
/// (flat Float, shapes as in the manifest) -> every output by name.
public protocol ModelRuntime: AnyObject {
    func run(_ inputs: [String: [Float]]) throws -> [String: [Float]]
    /// An integer-boundary bundle (`ModelManifest.integerBoundary`): every tensor in its manifest dtype, float32 as
    /// `[Float]`, a uint8 frame as `[UInt8]`, int8 states as `[Int8]`.
    func runTyped(_ inputs: [String: Any]) throws -> [String: Any]
}

public extension ModelRuntime {
    func runTyped(_ inputs: [String: Any]) throws -> [String: Any] {
        throw RuntimeError("this runtime runs float32 tensors only; an integer-boundary bundle (uint8 frame, int8 "
            + "states) needs ModelRuntime.runTyped")
    }
}

public struct RuntimeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A fed tensor that does not match the manifest (name, shape, dtype) or is not finite; the state is unchanged.
public struct InputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One step: raw logits `[num_classes]` and the wall time of `ModelRuntime.run` in milliseconds.
public struct StepResult {
    public let step: Int
    public let logits: [Float]
    public let milliseconds: Double
}

/// The last T preprocessed frames (zeros before the first), packed in the manifest's clip layout.
/// Used for clip-form bundles (input `clip`); stream-form bundles of clip models do this inside the model.
public final class ClipRing {
    public static let layouts = ["N(T*C)HW", "N(C*T)HW", "NCTHW"]
    public let frames: Int
    public let frameSize: Int
    public let layout: String
    private var ring: [[Float]]
    private var next = 0

    public init(frames: Int, frameSize: Int, layout: String) {
        self.frames = frames
        self.frameSize = frameSize
        self.layout = layout
        ring = Array(repeating: [Float](repeating: 0, count: frameSize), count: frames)
    }

    public func reset() {
        ring = Array(repeating: [Float](repeating: 0, count: frameSize), count: frames)
        next = 0
    }

    public func push(_ frame: [Float]) {
        ring[next] = frame
        next = (next + 1) % frames
    }

    /// Oldest first. `N(T*C)HW`: channel t*3+c; `N(C*T)HW` and `NCTHW`: channel c*T+t.
    public func packed() -> [Float] {
        let hw = frameSize / 3
        var out = [Float](repeating: 0, count: frames * frameSize)
        for t in 0..<frames {
            let f = ring[(next + t) % frames]
            for c in 0..<3 {
                let ch = layout == "N(T*C)HW" ? t * 3 + c : c * frames + t
                out.replaceSubrange(ch * hw..<(ch + 1) * hw, with: f[c * hw..<(c + 1) * hw])
            }
        }
        return out
    }
}

/// The frame loop every model shares. Stream form: feed `frame` and every state, then carry each state's output
/// (`<state>_out`) back as that state next step; states start at their init (zero; an int8 state, `[Int8]`, at
/// its zero point) and `reset()` returns them there. Integer boundary: the frame is `[UInt8]` RGB NHWC.
/// Clip form: keep the ring of the last `num_frames` frames and feed it as `clip`.
public final class StreamSession {
    public let manifest: ModelManifest
    private let runtime: ModelRuntime
    private var states: [String: Any] = [:]  // [Float] (float32) or [Int8] (int8)
    private let ring: ClipRing?
    public private(set) var steps = 0

    public init(manifest: ModelManifest, runtime: ModelRuntime) {
        self.manifest = manifest
        self.runtime = runtime
        let frameSize = 3 * manifest.preprocessing.height * manifest.preprocessing.width
        ring = manifest.form == .clip
            ? ClipRing(frames: manifest.numFrames, frameSize: frameSize, layout: manifest.clipLayout) : nil
        reset()
    }

    public func reset() {
        states = [:]
        for s in manifest.states {
            states[s.name] = s.dtype == "int8" ? [Int8](repeating: Int8(s.initValue), count: s.count) as Any
                : [Float](repeating: 0, count: s.count) as Any
        }
        ring?.reset()
        steps = 0
    }

    public func state(_ name: String) -> [Float]? { states[name] as? [Float] }

    /// The current value of an int8 state (integer boundary).
    public func int8State(_ name: String) -> [Int8]? { states[name] as? [Int8] }

    private var expected: String {
        let p = manifest.preprocessing
        if manifest.rawFrame {
            return "\(TensorNames.frame): uint8 [1, \(p.height), \(p.width), 3] (\(3 * p.height * p.width) RGB bytes)"
        }
        return "\(TensorNames.frame): float32 [1, 3, \(p.height), \(p.width)] (\(3 * p.height * p.width) values), finite"
    }

    /// Checks one preprocessed frame against the manifest: 3 x H x W values, all finite (one cheap pass).
    /// Throws `InputError` saying what was expected; nothing has been fed yet, so the state is unchanged.
    public func checkFrame(_ frame: [Float]) throws {
        guard !manifest.rawFrame else {
            throw InputError("frame is [Float]; expected \(expected) (the graph preprocesses); the state is unchanged")
        }
        let size = 3 * manifest.preprocessing.height * manifest.preprocessing.width
        guard frame.count == size else {
            throw InputError("frame has \(frame.count) values; expected \(expected); the state is unchanged")
        }
        if let i = frame.firstIndex(where: { !$0.isFinite }) {
            throw InputError("frame holds \(frame[i]) at \(i); expected \(expected); the state is unchanged")
        }
    }

    /// Checks one uint8 RGB frame (integer boundary): H x W x 3 bytes.
    public func checkFrame(_ frame: [UInt8]) throws {
        guard manifest.rawFrame else {
            throw InputError("frame is [UInt8]; expected \(expected) (preprocess it); the state is unchanged")
        }
        guard frame.count == 3 * manifest.preprocessing.height * manifest.preprocessing.width else {
            throw InputError("frame has \(frame.count) values; expected \(expected); the state is unchanged")
        }
    }

    /// Named feeds, as the contract names them: exactly `frame`, a `[Float]` (float32), or `[UInt8]` RGB bytes for
    /// an integer boundary.
    public func step(feeds: [String: Any]) throws -> StepResult {
        guard Set(feeds.keys) == [TensorNames.frame] else {
            throw InputError("step takes {\(expected)}, got inputs \(feeds.keys.sorted()); the state is unchanged")
        }
        if manifest.rawFrame, let bytes = feeds[TensorNames.frame] as? [UInt8] { return try step(bytes) }
        guard let frame = feeds[TensorNames.frame] as? [Float] else {
            let got = feeds[TensorNames.frame].map { "\(type(of: $0))" } ?? "nothing"
            throw InputError("frame is \(got), not [Float] (float32); expected \(expected); the state is unchanged")
        }
        return try step(frame)
    }

    /// One preprocessed frame (Float NCHW `[1, 3, H, W]`, flat); refused with `InputError`, state kept, if it is not.
    public func step(_ frame: [Float]) throws -> StepResult {
        try checkFrame(frame)
        if let ring = ring {
            ring.push(frame)
            return try run([TensorNames.clip: ring.packed()])
        }
        return try run([TensorNames.frame: frame])
    }

    /// One uint8 RGB frame (integer boundary: NHWC `[1, H, W, 3]`, the camera's bytes at the model size; the graph
    /// preprocesses them); refused with `InputError`, state kept, if the bundle takes float32 or the size is wrong.
    public func step(_ frame: [UInt8]) throws -> StepResult {
        try checkFrame(frame)
        return try run([TensorNames.frame: frame])
    }

    private func run(_ fed: [String: Any]) throws -> StepResult {
        var inputs = fed
        if ring == nil { for s in manifest.states { inputs[s.name] = states[s.name] } }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let outputs: [String: Any]
        if manifest.integerBoundary {
            outputs = try runtime.runTyped(inputs)
        } else {
            var floats: [String: [Float]] = [:]
            for (k, v) in inputs { floats[k] = v as? [Float] }
            outputs = try runtime.run(floats)
        }
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        guard let logits = outputs[TensorNames.logits] as? [Float], logits.count == manifest.numClasses else {
            throw RuntimeError("the runtime returned no float32 logits of size \(manifest.numClasses)")
        }
        var carried: [String: Any] = [:]
        for s in manifest.states {
            let n = s.dtype == "int8" ? (outputs[s.output] as? [Int8])?.count : (outputs[s.output] as? [Float])?.count
            guard n == s.count else {
                throw RuntimeError("the runtime returned no \(s.output) of \(s.dtype) x \(s.count)")
            }
            carried[s.name] = outputs[s.output]
        }
        states.merge(carried) { _, new in new }
        steps += 1
        return StepResult(step: steps - 1, logits: logits, milliseconds: ms)
    }
}
