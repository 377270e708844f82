package org.stexport.demo.core

import java.io.File

/** An exported bundle folder: `manifest.json`, `labels.txt` and the artifact the manifest names. */
class DemoBundle(val dir: File, val manifest: ModelManifest, val labels: Labels) {
    val artifact: File get() = File(dir, manifest.artifactFile)

    companion object {
        fun load(dir: File): DemoBundle {
            val mf = File(dir, "manifest.json")
            require(mf.isFile) { "no manifest.json in $dir: copy a whole stexport bundle folder there" }
            val manifest = ModelManifest.parse(mf.readText())
            val lf = File(dir, manifest.labelsFile)
            val labels = if (lf.isFile) Labels.parse(lf.readText()) else Labels(emptyList())
            return DemoBundle(dir, manifest, labels)
        }
    }
}

/** What the screen shows after a frame. */
class Prediction(val step: Int, val top: List<Ranked>, val millis: Double, val meanMillis: Double)

/**
 * Camera frame -> top-5: preprocessing per manifest, the shared frame loop, softmax, smoothing, labels.
 * Not thread-safe: call from one analysis thread.
 */
class DemoPipeline(
    val manifest: ModelManifest,
    runtime: ModelRuntime,
    private val labels: Labels,
    smoothing: Float = 0.3f,
) {
    val preprocessor = Preprocessor(manifest.preprocessing)
    val session = StreamSession(manifest, runtime)
    private val smoother = Smoother(smoothing)
    private val gate = FrameGate(manifest.preprocessing.frameStride)
    private val meter = MsMeter()
    private val input = FloatArray(3 * manifest.preprocessing.height * manifest.preprocessing.width)

    /** A YUV camera frame; returns null when the frame is skipped by the manifest's frame_stride. */
    fun onCameraFrame(img: YuvPlanes, rotationDegrees: Int): Prediction? {
        if (!gate.accept()) return null
        return onModelRgb(preprocessor.yuvToModelRgb(img, rotationDegrees))
    }

    /** An RGB uint8 HWC frame of any size (resized and centre-cropped here). */
    fun onRgbFrame(rgb: ByteArray, width: Int, height: Int): Prediction =
        onModelRgb(preprocessor.resizeCrop(rgb, width, height))

    /** An RGB uint8 HWC frame already at the model size. */
    fun onModelRgb(rgb: ByteArray): Prediction {
        // integer boundary: the graph preprocesses, so the model-size RGB bytes are the frame
        val r = if (manifest.rawFrame) session.step(rgb) else session.step(preprocessor.normalize(rgb, input))
        val probs = smoother.update(Scores.softmax(r.logits))
        return Prediction(r.step, Scores.ranked(probs, labels, 5), r.millis, meter.add(r.millis))
    }

    fun reset() {
        session.reset()
        smoother.reset()
        gate.reset()
        meter.reset()
    }
}
