package org.stexport.demo

import org.stexport.demo.core.ModelManifest
import org.stexport.demo.core.ModelRuntime
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.FloatBuffer

/**
 * LiteRT Interpreter behind the core's [ModelRuntime]: every tensor goes in and out by its signature name
 * (the manifest's names; signature `manifest.tflite.signature`, "serving_default"). Nothing here knows a
 * model: the state names come from the manifest, and the core carries each `<state>_out` back to `<state>`.
 */
class LiteRtRuntime(modelFile: File, private val manifest: ModelManifest, threads: Int = 4) : ModelRuntime, AutoCloseable {
    private val interpreter = Interpreter(modelFile, Interpreter.Options().setNumThreads(threads))
    private val signature = manifest.tfliteSignature

    init {
        val keys = interpreter.signatureKeys.toList()
        require(signature in keys) { "${modelFile.name} has no signature '$signature' (has $keys)" }
        val inputs = interpreter.getSignatureInputs(signature).toSet()
        val outputs = interpreter.getSignatureOutputs(signature).toSet()
        require(inputs == manifest.inputOrder.toSet()) {
            "signature inputs $inputs do not match the manifest's ${manifest.inputOrder}"
        }
        require(outputs == manifest.outputOrder.toSet()) {
            "signature outputs $outputs do not match the manifest's ${manifest.outputOrder}"
        }
    }

    override fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray> {
        val feeds = HashMap<String, Any>()
        for ((name, data) in inputs) feeds[name] = FloatBuffer.wrap(data)
        // fresh arrays every call: the session keeps the state outputs as the next step's inputs
        val results = LinkedHashMap<String, FloatArray>()
        val fetches = HashMap<String, Any>()
        for (t in manifest.outputs) {
            val a = FloatArray(t.size)
            results[t.name] = a
            fetches[t.name] = FloatBuffer.wrap(a)
        }
        interpreter.runSignature(feeds, fetches, signature)
        return results
    }

    /** Integer boundary: uint8/int8 tensors as ByteArray (a uint8 RGB frame, int8 states), float32 as FloatArray. */
    override fun runTyped(inputs: Map<String, Any>): Map<String, Any> {
        val feeds = HashMap<String, Any>()
        for ((name, data) in inputs) {
            feeds[name] = when (data) {
                is FloatArray -> FloatBuffer.wrap(data)
                is ByteArray -> ByteBuffer.wrap(data)
                else -> throw IllegalArgumentException("input $name is a ${data::class.simpleName}")
            }
        }
        val results = LinkedHashMap<String, Any>()
        val fetches = HashMap<String, Any>()
        for (t in manifest.outputs) {
            if (t.dtype == "float32") {
                val a = FloatArray(t.size)
                results[t.name] = a
                fetches[t.name] = FloatBuffer.wrap(a)
            } else {
                val a = ByteArray(t.size)
                results[t.name] = a
                fetches[t.name] = ByteBuffer.wrap(a)
            }
        }
        interpreter.runSignature(feeds, fetches, signature)
        return results
    }

    override fun close() = interpreter.close()
}
