import Foundation
import XCTest
@testable import StexportCore

/// Serves the recorded logits of `golden.json` and, for every state, a fresh tagged array, so the next call can
/// check that exactly that array came back as the state input.
final class ReplayRuntime: ModelRuntime {
    let manifest: ModelManifest
    let steps: [[String: Any]]
    let perStep: Int
    var calls = 0
    var served: [String: [Float]] = [:]

    init(manifest: ModelManifest, golden: [String: Any]) {
        self.manifest = manifest
        steps = golden["steps"] as? [[String: Any]] ?? []
        perStep = golden["frames_per_step"] as? Int ?? 1
    }

    func run(_ inputs: [String: [Float]]) throws -> [String: [Float]] {
        defer { calls += 1 }
        XCTAssertEqual(Set(inputs.keys), Set(manifest.inputOrder))
        for s in manifest.states {
            let got = inputs[s.name] ?? []
            if calls == 0 {
                XCTAssertTrue(got.allSatisfy { $0 == 0 }, "\(s.name) starts at zero")
            } else {
                XCTAssertEqual(got, served[s.output], "\(s.name) is last step's \(s.output)")
            }
        }
        let complete = (calls + 1) % perStep == 0
        let step = calls / perStep < steps.count ? steps[calls / perStep] : nil
        var out: [String: [Float]] = [:]
        if complete, let step = step, let logits = step["logits"] as? [Double] {
            out[TensorNames.logits] = logits.map { Float($0) }
            if let summaries = step["input_summary"] as? [String: [String: Any]] {
                for (name, summary) in summaries { check(inputs[name] ?? [], summary, name) }
            }
        } else {
            out[TensorNames.logits] = [Float](repeating: 0, count: manifest.numClasses)
        }
        for (i, s) in manifest.states.enumerated() {
            out[s.output] = (0..<s.count).map { Float(1000 * (calls + 1) + 10 * i + $0 % 5) }
        }
        served = out
        return out
    }

    private func check(_ data: [Float], _ summary: [String: Any], _ name: String) {
        let samples = summary["samples"] as? [String: Any] ?? [:]
        let index = samples["index"] as? [Int] ?? []
        let values = samples["values"] as? [Double] ?? []
        for (k, i) in index.enumerated() {
            XCTAssertEqual(Double(data[i]), values[k], accuracy: 1e-6, "\(name)[\(i)]")
        }
        let sum = data.reduce(0.0) { $0 + Double($1) }
        XCTAssertEqual(sum, summary["sum"] as? Double ?? .nan, accuracy: 1e-6 * Double(data.count))
    }
}

final class StexportCoreTests: XCTestCase {
    /// Bundle folders to replay: STEXPORT_BUNDLES=dir1:dir2 (exported with stexport, any target).
    private var bundles: [URL] {
        (ProcessInfo.processInfo.environment["STEXPORT_BUNDLES"] ?? "").split(separator: ":")
            .map { URL(fileURLWithPath: String($0)) }
    }

    func testGoldenReplay() throws {
        try XCTSkipIf(bundles.isEmpty, "set STEXPORT_BUNDLES to exported bundle folders")
        for dir in bundles {
            let manifest = try ModelManifest.parse(Data(contentsOf: dir.appendingPathComponent("manifest.json")))
            let golden = try JSONSerialization.jsonObject(
                with: Data(contentsOf: dir.appendingPathComponent("golden.json"))) as? [String: Any] ?? [:]
            let labels = try Labels(text: String(contentsOf: dir.appendingPathComponent("labels.txt"), encoding: .utf8))
            let runtime = ReplayRuntime(manifest: manifest, golden: golden)
            let session = StreamSession(manifest: manifest, runtime: runtime)
            let pre = Preprocessor(manifest.preprocessing)
            for step in runtime.steps {
                var last: StepResult?
                for b64 in step["frames_u8_b64"] as? [String] ?? [] {
                    let rgb = [UInt8](Data(base64Encoded: b64) ?? Data())
                    last = try session.step(pre.normalize(rgb))
                }
                let top = try Scores.ranked(XCTUnwrap(last).logits, labels: labels)
                let want = (step["top5"] as? [[String: Any]] ?? []).map { $0["label"] as? String ?? "" }
                XCTAssertEqual(top.map { $0.label }, want)
            }
            session.reset()
            for s in manifest.states { XCTAssertTrue(session.state(s.name)?.allSatisfy { $0 == 0 } ?? false) }
        }
    }

    func testNormalizeFollowsTheFormula() {
        let pre = Preprocessing(height: 1, width: 2, valueRange: [0, 1], mean: [0.485, 0.456, 0.406],
                                std: [0.229, 0.224, 0.225], resize: "shorter side to 256, then center crop 224",
                                fps: nil, frameStride: 2)
        XCTAssertEqual(pre.resizeShorter, 256)
        let x = Preprocessor(pre).normalize([0, 128, 255, 10, 20, 30])
        XCTAssertEqual(x[0], (0 - Float(0.485)) / Float(0.229))
        XCTAssertEqual(x[4], (1 - Float(0.406)) / Float(0.225))
    }

    func testCropRect() {
        let pre = Preprocessing(height: 224, width: 224, valueRange: [0, 1], mean: [0, 0, 0], std: [1, 1, 1],
                                resize: "shorter side to 256, then center crop 224", fps: nil, frameStride: 1)
        let r = Preprocessor(pre).cropRect(srcW: 1280, srcH: 720)
        XCTAssertEqual(r.height, 720.0 * 224 / 256, accuracy: 1e-9)
        XCTAssertEqual(r.x, (1280 - r.width) / 2, accuracy: 1e-9)
    }

    func testClipRingLayouts() {
        let ring = ClipRing(frames: 2, frameSize: 3, layout: "N(C*T)HW")
        ring.push([1, 2, 3])
        XCTAssertEqual(ring.packed(), [0, 1, 0, 2, 0, 3])
        let tc = ClipRing(frames: 2, frameSize: 3, layout: "N(T*C)HW")
        tc.push([1, 2, 3])
        XCTAssertEqual(tc.packed(), [0, 0, 0, 1, 2, 3])
    }

    func testTopKAndSmoother() {
        XCTAssertEqual(Scores.topK([1, 3, 2, 3], 3), [1, 3, 2])
        let s = Smoother(alpha: 0.5)
        _ = s.update([1, 0])
        XCTAssertEqual(s.update([0, 1]), [0.5, 0.5])
    }

    // MARK: input checks

    private static let toyManifest = """
    {"schema_version": 1, "model": {"name": "toy", "num_classes": 3, "num_frames": 4, "streaming": true},
     "form": "stream", "target": "coreml", "artifact": {"file": "toy.mlpackage", "bytes": 1},
     "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0, 0, 0], "std": [1, 1, 1],
                       "channel_order": "RGB", "resize": "shorter side, then center crop", "frame_stride": 1},
     "labels": {"file": "labels.txt", "count": 3},
     "inputs": [{"name": "frame", "shape": [1, 3, 2, 2], "dtype": "float32", "layout": "NCHW"},
                {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "float32"}],
     "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"},
                 {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "float32"}],
     "states": [{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2], "dtype": "float32", "init": "zeros"}],
     "input_order": ["frame", "buf"], "output_order": ["logits", "buf_out"]}
    """

    /// Fixed logits; every state's output is its input plus one (carried state is visible).
    final class CountingRuntime: ModelRuntime {
        let manifest: ModelManifest
        var calls = 0
        init(_ manifest: ModelManifest) { self.manifest = manifest }
        func run(_ inputs: [String: [Float]]) throws -> [String: [Float]] {
            calls += 1
            var out: [String: [Float]] = [TensorNames.logits: [0, 1, 2]]
            for s in manifest.states { out[s.output] = (inputs[s.name] ?? []).map { $0 + 1 } }
            return out
        }
    }

    private func toySession() throws -> (StreamSession, CountingRuntime) {
        let manifest = try ModelManifest.parse(Data(Self.toyManifest.utf8))
        let runtime = CountingRuntime(manifest)
        return (StreamSession(manifest: manifest, runtime: runtime), runtime)
    }

    func testRefusesAFrameOfTheWrongSize() throws {
        let (session, runtime) = try toySession()
        XCTAssertThrowsError(try session.step([Float](repeating: 0, count: 11))) { error in
            XCTAssertTrue("\(error)".contains("frame has 11 values; expected frame: float32 [1, 3, 2, 2]"))
        }
        XCTAssertEqual(runtime.calls, 0)
    }

    func testRefusesANonFiniteFrameAndKeepsTheState() throws {
        for bad in [Float.nan, Float.infinity, -Float.infinity] {
            let (session, runtime) = try toySession()
            _ = try session.step([Float](repeating: 0.5, count: 12))
            let before = session.state("buf")
            var poisoned = [Float](repeating: 0.5, count: 12)
            poisoned[5] = bad
            XCTAssertThrowsError(try session.step(poisoned)) { XCTAssertTrue($0 is InputError) }
            XCTAssertEqual(session.state("buf"), before)
            XCTAssertEqual(runtime.calls, 1)
            _ = try session.step([Float](repeating: 0.5, count: 12))
            XCTAssertEqual(session.state("buf"), [Float](repeating: 2, count: 8))
        }
    }

    func testRefusesWrongNamesAndDtypes() throws {
        let (session, _) = try toySession()
        let frame = [Float](repeating: 0.5, count: 12)
        XCTAssertThrowsError(try session.step(feeds: ["image": frame])) { error in
            XCTAssertTrue("\(error)".contains("got inputs [\"image\"]"))
        }
        XCTAssertThrowsError(try session.step(feeds: [TensorNames.frame: frame, "buf": frame]))
        XCTAssertThrowsError(try session.step(feeds: [TensorNames.frame: [Double](repeating: 0.5, count: 12)]))
        XCTAssertEqual(session.steps, 0)
        XCTAssertEqual(try session.step(feeds: [TensorNames.frame: frame]).step, 0)
    }
}

/// The integer boundary (`stexport --io int8`): a uint8 NHWC frame fed as bytes, an int8 state starting at its
/// zero point and carried as `[Int8]`, a float32 running mean, float32 logits.
final class IntegerBoundaryTests: XCTestCase {
    static let int8Manifest = """
    {"schema_version": 1, "io": "int8",
     "model": {"name": "toy8", "num_classes": 3, "num_frames": 4, "streaming": true},
     "form": "stream", "target": "tflite", "artifact": {"file": "toy8_int8.tflite", "bytes": 1},
     "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0, 0, 0], "std": [1, 1, 1]},
     "inputs": [{"name": "frame", "shape": [1, 2, 2, 3], "dtype": "uint8", "layout": "NHWC",
                 "quantization": {"scale": 1.0, "zero_point": 0}},
                {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "int8", "init": "zero_point", "init_value": -117,
                 "quantization": {"scale": 0.0336, "zero_point": -117}},
                {"name": "mean", "shape": [1, 2], "dtype": "float32", "init": "zeros"}],
     "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"},
                 {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8",
                  "quantization": {"scale": 0.0336, "zero_point": -117}},
                 {"name": "mean_out", "shape": [1, 2], "dtype": "float32"}],
     "states": [{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8", "init": "zero_point",
                 "init_value": -117, "quantization": {"scale": 0.0336, "zero_point": -117}},
                {"name": "mean", "output": "mean_out", "shape": [1, 2], "dtype": "float32", "init": "zeros"}],
     "input_order": ["frame", "buf", "mean"], "output_order": ["logits", "buf_out", "mean_out"]}
    """

    /// int8 state + 1, float32 state + 0.5; records the frames it was fed.
    final class TypedRuntime: ModelRuntime {
        var frames: [[UInt8]] = []
        func run(_ inputs: [String: [Float]]) throws -> [String: [Float]] {
            XCTFail("an integer boundary runs through runTyped")
            return [:]
        }
        func runTyped(_ inputs: [String: Any]) throws -> [String: Any] {
            frames.append(inputs[TensorNames.frame] as? [UInt8] ?? [])
            let buf = inputs["buf"] as? [Int8] ?? []
            let mean = inputs["mean"] as? [Float] ?? []
            return [TensorNames.logits: [Float]([0, 1, 2]), "buf_out": buf.map { $0 + 1 }, "mean_out": mean.map { $0 + 0.5 }]
        }
    }

    func testReadsQuantizationAndStartsAtTheZeroPoint() throws {
        let manifest = try ModelManifest.parse(Data(Self.int8Manifest.utf8))
        XCTAssertTrue(manifest.rawFrame && manifest.integerBoundary)
        let buf = try XCTUnwrap(manifest.states.first { $0.name == "buf" })
        XCTAssertEqual(buf.dtype, "int8")
        XCTAssertEqual(buf.initValue, -117)
        XCTAssertEqual(buf.quantization?.dequantize(-117), 0)
        let runtime = TypedRuntime()
        let session = StreamSession(manifest: manifest, runtime: runtime)
        XCTAssertEqual(session.int8State("buf"), [Int8](repeating: -117, count: 8))
        let rgb = (0..<12).map { UInt8(200 + $0) }
        for _ in 0..<3 { _ = try session.step(feeds: [TensorNames.frame: rgb]) }
        XCTAssertEqual(runtime.frames.first, rgb)
        XCTAssertEqual(session.int8State("buf"), [Int8](repeating: -114, count: 8))
        XCTAssertEqual(session.state("mean"), [1.5, 1.5])
        session.reset()
        XCTAssertEqual(session.int8State("buf"), [Int8](repeating: -117, count: 8))
    }

    func testRefusesFloatFramesOnAnIntegerBoundary() throws {
        let manifest = try ModelManifest.parse(Data(Self.int8Manifest.utf8))
        let runtime = TypedRuntime()
        let session = StreamSession(manifest: manifest, runtime: runtime)
        XCTAssertThrowsError(try session.step([Float](repeating: 0.5, count: 12))) { error in
            XCTAssertTrue("\(error)".contains("expected frame: uint8 [1, 2, 2, 3] (12 RGB bytes)"))
        }
        XCTAssertThrowsError(try session.step([UInt8](repeating: 1, count: 11))) { XCTAssertTrue($0 is InputError) }
        XCTAssertTrue(runtime.frames.isEmpty)
        let broken = Self.int8Manifest.replacingOccurrences(of: "\"init_value\": -117, \"quantization\": {\"scale\": 0.0336, \"zero_point\": -117}},\n                {\"name\": \"mean\", \"output\"",
                                                            with: "\"init_value\": 0, \"quantization\": {\"scale\": 0.0336, \"zero_point\": -117}},\n                {\"name\": \"mean\", \"output\"")
        XCTAssertThrowsError(try ModelManifest.parse(Data(broken.utf8)))
    }
}
