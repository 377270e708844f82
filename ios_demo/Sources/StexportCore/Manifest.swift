import Foundation

/// Every `manifest.json` key the app reads; CI checks each one against a real exported manifest.
public enum ManifestKeys {
    public static let model = "model"
    public static let name = "name"
    public static let numClasses = "num_classes"
    public static let numFrames = "num_frames"
    public static let form = "form"
    public static let target = "target"
    public static let artifact = "artifact"
    public static let file = "file"
    public static let preprocessing = "preprocessing"
    public static let size = "size"
    public static let valueRange = "value_range"
    public static let mean = "mean"
    public static let std = "std"
    public static let resize = "resize"
    public static let fps = "fps"
    public static let frameStride = "frame_stride"
    public static let channelOrder = "channel_order"
    public static let labels = "labels"
    public static let inputs = "inputs"
    public static let outputs = "outputs"
    public static let states = "states"
    public static let inputOrder = "input_order"
    public static let outputOrder = "output_order"
    public static let shape = "shape"
    public static let dtype = "dtype"
    public static let layout = "layout"
    public static let output = "output"
}

/// Tensor names fixed by the stexport contract (everything else comes from the manifest).
public enum TensorNames {
    public static let frame = "frame"
    public static let clip = "clip"
    public static let logits = "logits"
    public static let stateOutputSuffix = "_out"
}

public struct ManifestError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum Form: String {
    case stream
    case clip
}

/// Keys of an integer-boundary manifest (`stexport --io int8`): per-tensor quantization and the integer init.
public enum IntegerManifestKeys {
    public static let quantization = "quantization"
    public static let scale = "scale"
    public static let zeroPoint = "zero_point"
    public static let initKind = "init"
    public static let initValue = "init_value"
}

/// An integer tensor's quantization: real value = scale * (q - zeroPoint).
public struct Quantization: Equatable {
    public let scale: Double
    public let zeroPoint: Int
    public func dequantize(_ q: Int8) -> Float { Float(scale * Double(Int(q) - zeroPoint)) }
}

/// A tensor of the contract (static shape, row-major): float32, or with an integer boundary a uint8 frame and
/// int8 states carrying their quantization.
public struct TensorInfo {
    public let name: String
    public let shape: [Int]
    public let dtype: String
    public let layout: String
    public var quantization: Quantization? = nil
    public var count: Int { shape.reduce(1, *) }
}

/// A state carried between steps: feed `output` back as `name` next step. A float32 state starts at zero, an int8
/// state (`[Int8]`) at its zero point (`initValue`, the integer that means 0.0).
public struct StateInfo {
    public let name: String
    public let output: String
    public let shape: [Int]
    public var dtype: String = "float32"
    public var quantization: Quantization? = nil
    public var count: Int { shape.reduce(1, *) }
    public var initValue: Int { quantization?.zeroPoint ?? 0 }
}

/// Resize (shorter side, then centre crop to height x width), then
/// `x = (u8 / 255 * (hi - lo) + lo - mean[c]) / std[c]` in Float, NCHW.
public struct Preprocessing {
    public let height: Int
    public let width: Int
    public let valueRange: [Double]
    public let mean: [Float]
    public let std: [Float]
    public let resize: String
    public let fps: Double?
    public let frameStride: Int

    /// The shorter-side length before the crop when the manifest names one ("shorter side to 256, ...").
    public var resizeShorter: Int? {
        guard let re = try? NSRegularExpression(pattern: "shorter side to (\\d+)"),
              let m = re.firstMatch(in: resize, range: NSRange(resize.startIndex..., in: resize)),
              let r = Range(m.range(at: 1), in: resize) else { return nil }
        return Int(resize[r])
    }

    public init(height: Int, width: Int, valueRange: [Double], mean: [Float], std: [Float], resize: String,
                fps: Double?, frameStride: Int) {
        self.height = height
        self.width = width
        self.valueRange = valueRange
        self.mean = mean
        self.std = std
        self.resize = resize
        self.fps = fps
        self.frameStride = frameStride
    }
}

/// What an app needs from `manifest.json` to run a bundle.
public struct ModelManifest {
    public let name: String
    public let numClasses: Int
    public let numFrames: Int
    public let form: Form
    public let target: String
    public let artifactFile: String
    public let labelsFile: String
    public let preprocessing: Preprocessing
    public let inputs: [TensorInfo]
    public let outputs: [TensorInfo]
    public let states: [StateInfo]
    public let inputOrder: [String]
    public let outputOrder: [String]

    public func input(_ name: String) throws -> TensorInfo {
        guard let t = inputs.first(where: { $0.name == name }) else {
            throw ManifestError("manifest has no input '\(name)' (inputs: \(inputs.map { $0.name }))")
        }
        return t
    }

    public func output(_ name: String) throws -> TensorInfo {
        guard let t = outputs.first(where: { $0.name == name }) else {
            throw ManifestError("manifest has no output '\(name)' (outputs: \(outputs.map { $0.name }))")
        }
        return t
    }

    /// Integer boundary: the frame is uint8 RGB NHWC `[1, H, W, 3]`, the preprocessing being inside the graph.
    public var rawFrame: Bool { form == .stream && inputs.first(where: { $0.name == TensorNames.frame })?.dtype == "uint8" }

    /// Any uint8/int8 tensor at the boundary: run through `ModelRuntime.runTyped`.
    public var integerBoundary: Bool { rawFrame || states.contains(where: { $0.dtype != "float32" }) }

    /// The packed layout of the `clip` input (clip form only), e.g. "N(T*C)HW".
    public var clipLayout: String { inputs.first(where: { $0.name == TensorNames.clip })?.layout ?? "" }

    public static func parse(_ data: Data) throws -> ModelManifest {
        guard let m = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ManifestError("manifest.json is not a JSON object")
        }
        let model = try obj(m, ManifestKeys.model)
        let p = try obj(m, ManifestKeys.preprocessing)
        let size = try ints(p, ManifestKeys.size)
        guard size.count == 2 else { throw ManifestError("preprocessing.size must be [height, width]") }
        let order = p[ManifestKeys.channelOrder] as? String ?? "RGB"
        guard order == "RGB" else { throw ManifestError("only RGB channel order is supported, not \(order)") }
        let pre = try Preprocessing(
            height: size[0], width: size[1],
            valueRange: doubles(p, ManifestKeys.valueRange),
            mean: doubles(p, ManifestKeys.mean).map { Float($0) },
            std: doubles(p, ManifestKeys.std).map { Float($0) },
            resize: p[ManifestKeys.resize] as? String ?? "shorter side, then center crop",
            fps: p[ManifestKeys.fps] as? Double,
            frameStride: (p[ManifestKeys.frameStride] as? NSNumber)?.intValue ?? 1)
        func quant(_ o: [String: Any]) throws -> Quantization? {
            guard let q = o[IntegerManifestKeys.quantization] as? [String: Any] else { return nil }
            guard let scale = q[IntegerManifestKeys.scale] as? NSNumber else { throw ManifestError("quantization.scale") }
            return try Quantization(scale: scale.doubleValue, zeroPoint: int(q, IntegerManifestKeys.zeroPoint))
        }
        func tensor(_ o: [String: Any]) throws -> TensorInfo {
            try TensorInfo(name: str(o, ManifestKeys.name), shape: ints(o, ManifestKeys.shape),
                       dtype: o[ManifestKeys.dtype] as? String ?? "float32", layout: o[ManifestKeys.layout] as? String ?? "",
                       quantization: quant(o))
        }
        let inputs = try objs(m, ManifestKeys.inputs).map(tensor)
        let outputs = try objs(m, ManifestKeys.outputs).map(tensor)
        let states = try objs(m, ManifestKeys.states).map { o -> StateInfo in
            let name = try str(o, ManifestKeys.name)
            let dtype = o[ManifestKeys.dtype] as? String ?? "float32"
            let q = try quant(o)
            if dtype == "int8" {  // an int8 state starts at its zero point
                guard let q = q, o[IntegerManifestKeys.initKind] as? String == "zero_point" else {
                    throw ManifestError("int8 state \(name) needs quantization and init zero_point")
                }
                let initValue = (o[IntegerManifestKeys.initValue] as? NSNumber)?.intValue ?? q.zeroPoint
                guard initValue == q.zeroPoint else { throw ManifestError("state \(name): init_value is not its zero point") }
            }
            return try StateInfo(name: name, output: str(o, ManifestKeys.output), shape: ints(o, ManifestKeys.shape),
                                 dtype: dtype, quantization: dtype == "int8" ? q : nil)
        }
        guard let form = Form(rawValue: try str(m, ManifestKeys.form)) else { throw ManifestError("unknown form") }
        let labels = (m[ManifestKeys.labels] as? [String: Any])?[ManifestKeys.file] as? String ?? "labels.txt"
        let manifest = try ModelManifest(
            name: str(model, ManifestKeys.name), numClasses: int(model, ManifestKeys.numClasses),
            numFrames: int(model, ManifestKeys.numFrames), form: form, target: str(m, ManifestKeys.target),
            artifactFile: str(obj(m, ManifestKeys.artifact), ManifestKeys.file), labelsFile: labels,
            preprocessing: pre, inputs: inputs, outputs: outputs, states: states,
            inputOrder: strings(m, ManifestKeys.inputOrder), outputOrder: strings(m, ManifestKeys.outputOrder))
        try manifest.validate()
        return manifest
    }

    /// The contract the app relies on: a bundle that breaks it fails at load time, not mid-stream.
    public func validate() throws {
        var stateDtype: [String: String] = [:]
        for s in states {
            guard s.dtype == "float32" || s.dtype == "int8" else { throw ManifestError("state \(s.name) is \(s.dtype)") }
            stateDtype[s.name] = s.dtype
            stateDtype[s.output] = s.dtype
        }
        for t in inputs + outputs {
            let want = t.name == TensorNames.frame && t.dtype == "uint8" ? "uint8" : stateDtype[t.name] ?? "float32"
            guard t.dtype == want else { throw ManifestError("tensor \(t.name) is \(t.dtype), not \(want)") }
        }
        guard try output(TensorNames.logits).count == numClasses else {
            throw ManifestError("logits size != num_classes")
        }
        let p = preprocessing
        switch form {
        case .stream:
            let frameShape = rawFrame ? [1, p.height, p.width, 3] : [1, 3, p.height, p.width]
            guard try input(TensorNames.frame).shape == frameShape else {
                throw ManifestError("frame shape is not \(frameShape)")
            }
            for s in states {
                guard try input(s.name).shape == s.shape, try output(s.output).shape == s.shape else {
                    throw ManifestError("state \(s.name): input/output shapes do not match")
                }
            }
        case .clip:
            guard ClipRing.layouts.contains(clipLayout) else { throw ManifestError("unknown clip layout \(clipLayout)") }
            guard try input(TensorNames.clip).count == 3 * numFrames * p.height * p.width else {
                throw ManifestError("clip input size mismatch")
            }
        }
    }
}

// MARK: - typed access to JSONSerialization output

private func obj(_ d: [String: Any], _ k: String) throws -> [String: Any] {
    guard let v = d[k] as? [String: Any] else { throw ManifestError("'\(k)' must be an object") }
    return v
}

private func objs(_ d: [String: Any], _ k: String) throws -> [[String: Any]] {
    guard let v = d[k] as? [[String: Any]] else { throw ManifestError("'\(k)' must be an array of objects") }
    return v
}

private func str(_ d: [String: Any], _ k: String) throws -> String {
    guard let v = d[k] as? String else { throw ManifestError("'\(k)' must be a string") }
    return v
}

private func strings(_ d: [String: Any], _ k: String) throws -> [String] {
    guard let v = d[k] as? [String] else { throw ManifestError("'\(k)' must be an array of strings") }
    return v
}

private func int(_ d: [String: Any], _ k: String) throws -> Int {
    guard let v = d[k] as? NSNumber else { throw ManifestError("'\(k)' must be a number") }
    return v.intValue
}

private func ints(_ d: [String: Any], _ k: String) throws -> [Int] {
    guard let v = d[k] as? [NSNumber] else { throw ManifestError("'\(k)' must be an array of numbers") }
    return v.map { $0.intValue }
}

private func doubles(_ d: [String: Any], _ k: String) throws -> [Double] {
    guard let v = d[k] as? [NSNumber] else { throw ManifestError("'\(k)' must be an array of numbers") }
    return v.map { $0.doubleValue }
}
