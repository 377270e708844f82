import CoreML
import Foundation
import StexportCore

/// Core ML behind the core's `ModelRuntime`: every tensor is an MLMultiArray feature addressed by its manifest
/// name. Nothing here knows a model: the state names come from the manifest, and the core carries each
/// `<state>_out` back to `<state>` on the next frame.
final class CoreMLRuntime: ModelRuntime {
    private let model: MLModel
    private let manifest: ModelManifest

    /// `url`: the bundle's `.mlpackage` (compiled here on first use) or an already compiled `.mlmodelc`.
    init(url: URL, manifest: ModelManifest, computeUnits: MLComputeUnits = .all) throws {
        let compiled = try url.pathExtension == "mlmodelc" ? url : MLModel.compileModel(at: url)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiled, configuration: config)
        self.manifest = manifest
        let inputs = Set(model.modelDescription.inputDescriptionsByName.keys)
        let outputs = Set(model.modelDescription.outputDescriptionsByName.keys)
        guard inputs == Set(manifest.inputOrder), outputs == Set(manifest.outputOrder) else {
            throw RuntimeError("model features \(inputs.sorted()) -> \(outputs.sorted()) do not match the manifest's "
                               + "\(manifest.inputOrder) -> \(manifest.outputOrder)")
        }
    }

    func run(_ inputs: [String: [Float]]) throws -> [String: [Float]] {
        var features: [String: MLFeatureValue] = [:]
        for t in manifest.inputs {
            guard let data = inputs[t.name] else { throw RuntimeError("no value for input \(t.name)") }
            let array = try MLMultiArray(shape: t.shape.map { NSNumber(value: $0) }, dataType: .float32)
            let dst = array.dataPointer.bindMemory(to: Float.self, capacity: data.count)
            data.withUnsafeBufferPointer { src in dst.update(from: src.baseAddress!, count: data.count) }
            features[t.name] = MLFeatureValue(multiArray: array)
        }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        var out: [String: [Float]] = [:]
        for t in manifest.outputs {
            guard let array = result.featureValue(for: t.name)?.multiArrayValue else {
                throw RuntimeError("the model returned no \(t.name)")
            }
            out[t.name] = array.floatsInRowMajorOrder()
        }
        return out
    }
}

extension MLMultiArray {
    /// The values in row-major order whatever the array's strides (Core ML may pad rows). The exporter makes every
    /// output float32; a double array is converted.
    func floatsInRowMajorOrder() -> [Float] {
        let dims = shape.map { $0.intValue }
        let steps = strides.map { $0.intValue }
        let total = dims.reduce(1, *)
        var out = [Float](repeating: 0, count: total)
        var index = [Int](repeating: 0, count: dims.count)
        for flat in 0..<total {
            var offset = 0
            for d in 0..<dims.count { offset += index[d] * steps[d] }
            if dataType == .double {
                out[flat] = Float(dataPointer.assumingMemoryBound(to: Double.self)[offset])
            } else {
                out[flat] = dataPointer.assumingMemoryBound(to: Float.self)[offset]
            }
            var d = dims.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < dims[d] { break }
                index[d] = 0
                d -= 1
            }
        }
        return out
    }
}
