package org.stexport.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File
import java.util.Base64
import kotlin.math.abs
import kotlin.math.max

/** A summary the exporter records of a tensor: shape, float64 sum, max |x| and a few samples by flat index. */
class Summary(o: JsonObj) {
    val shape: IntArray = o.ints("shape")
    val sum: Double = o.num("sum")
    val absMax: Double = o.num("abs_max")
    val index: IntArray = o.obj("samples").ints("index")
    val values: DoubleArray = o.obj("samples").doubles("values")

    /** Assert that [data] (flat, row-major) matches; [tol] bounds each sample and the max. */
    fun check(what: String, data: FloatArray, tol: Double) {
        assertEquals("$what: size", shape.fold(1) { a, b -> a * b }, data.size)
        var s = 0.0
        var m = 0.0
        for (v in data) {
            s += v
            m = max(m, abs(v.toDouble()))
        }
        assertEquals("$what: sum", sum, s, tol * 1e-3 * data.size + 1e-9 * abs(sum))
        assertEquals("$what: abs_max", absMax, m, tol)
        for (k in index.indices) assertEquals("$what: sample ${index[k]}", values[k], data[index[k]].toDouble(), tol)
    }
}

class GoldenStep(o: JsonObj) {
    val frames: List<ByteArray> = o.strings("frames_u8_b64").map { Base64.getDecoder().decode(it) }
    val inputSummary: Map<String, Summary> = summaries(o.obj("input_summary"))
    val stateIn: Map<String, Summary> = summaries(o.obj("state_in_summary"))
    val stateOut: Map<String, Summary> = summaries(o.obj("state_out_summary"))
    val logits: FloatArray = o.floats("logits")
    val top5: List<JsonObj> = o.objects("top5")

    private companion object {
        @Suppress("UNCHECKED_CAST")
        fun summaries(o: JsonObj) = o.map.mapValues { Summary(JsonObj(it.value as Map<String, Any?>)) }
    }
}

class Golden(text: String) {
    private val o = JsonObj.parse(text, "golden")
    val height: Int = o.obj("frame_format").int("height")
    val width: Int = o.obj("frame_format").int("width")
    val framesPerStep: Int = o.int("frames_per_step")
    val steps: List<GoldenStep> = o.objects("steps").map(::GoldenStep)
}

/**
 * A runtime that serves the recorded outputs of `golden.json`: logits as recorded, and for every state a fresh
 * tagged tensor, so the next call can check that exactly that tensor came back as the state input.
 * Clip form: every frame runs the model; only the call that completes a golden step's window is checked.
 */
class ReplayRuntime(private val manifest: ModelManifest, private val golden: Golden) : ModelRuntime {
    var calls = 0
        private set
    val checkedInputs = mutableListOf<String>()
    private var served: Map<String, Any> = emptyMap()

    @Suppress("UNCHECKED_CAST")
    override fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray> =
        serve(inputs) as Map<String, FloatArray>

    /** An integer-boundary bundle: the frame is the golden RGB bytes themselves, int8 states start at zero point. */
    override fun runTyped(inputs: Map<String, Any>): Map<String, Any> = serve(inputs)

    private fun size(data: Any): Int = when (data) {
        is FloatArray -> data.size
        is ByteArray -> data.size
        else -> -1
    }

    private fun serve(inputs: Map<String, Any>): Map<String, Any> {
        val call = calls++
        assertEquals("input names", manifest.inputOrder.toSet(), inputs.keys)
        for ((name, data) in inputs) assertEquals("$name size", manifest.input(name).size, size(data))
        val perStep = golden.framesPerStep
        val complete = (call + 1) % perStep == 0
        val g = golden.steps.getOrNull(call / perStep)
        if (complete && g != null && manifest.rawFrame) {
            assertArrayEquals("step ${call / perStep}: frame is the golden bytes", g.frames.last(),
                inputs.getValue(TensorNames.FRAME) as ByteArray)
            checkedInputs += TensorNames.FRAME
        } else if (complete && g != null) {
            for ((name, summary) in g.inputSummary) {
                summary.check("step ${call / perStep} input $name", inputs.getValue(name) as FloatArray, PREPROCESS_TOL)
                checkedInputs += name
            }
        }
        for ((i, s) in manifest.states.withIndex()) {
            val got = inputs.getValue(s.name)
            if (call == 0) {
                val init = if (got is ByteArray) got.all { it.toInt() == s.initValue } else (got as FloatArray).all { it == 0f }
                assertTrue("state ${s.name} starts at ${s.initValue}", init)
                g?.stateIn?.get(s.name)?.let { assertEquals("golden state_in ${s.name} at step 0", 0.0, it.absMax, 0.0) }
            } else {
                assertTrue("state ${s.name} must be last step's ${s.output}", served.getValue(s.output) === got)
            }
            assertEquals("state ${s.name} shape", s.shape.toList(), manifest.input(s.name).shape.toList())
            assertEquals("state order", s.name, manifest.states[i].name)
        }
        val out = LinkedHashMap<String, Any>()
        out[TensorNames.LOGITS] = if (complete && g != null) g.logits.copyOf() else FloatArray(manifest.numClasses)
        for ((i, s) in manifest.states.withIndex()) {
            out[s.output] = if (s.dtype == "int8") ByteArray(s.size) { k -> (call * 7 + i + k).toByte() }
            else FloatArray(s.size) { k -> 1000f * (call + 1) + 10f * i + (k % 5) }
        }
        served = out
        return out
    }

    companion object {
        /** Preprocessing is float32 in the exporter's order: the tensors must agree to rounding. */
        const val PREPROCESS_TOL = 1e-6
    }
}

/** Replays the `golden.json` of real bundles (folders in system property `stexport.bundles`, path-separated). */
class GoldenReplayTest {
    private val bundles: List<File> = (System.getProperty("stexport.bundles") ?: "")
        .split(File.pathSeparator).filter { it.isNotBlank() }.map(::File)

    private fun eachBundle(body: (DemoBundle, Golden) -> Unit) {
        assumeTrue("no bundles given (-Dstexport.bundles=dir1${File.pathSeparator}dir2)", bundles.isNotEmpty())
        for (dir in bundles) {
            val bundle = DemoBundle.load(dir)
            body(bundle, Golden(File(dir, "golden.json").readText()))
        }
    }

    @Test
    fun replayCarriesEveryStateAndMatchesPreprocessingAndLabels() = eachBundle { bundle, golden ->
        val m = bundle.manifest
        val runtime = ReplayRuntime(m, golden)
        val session = StreamSession(m, runtime)
        val pre = Preprocessor(m.preprocessing)
        assertEquals(m.preprocessing.height, golden.height)
        assertEquals(m.preprocessing.width, golden.width)
        for ((i, step) in golden.steps.withIndex()) {
            assertEquals(golden.framesPerStep, step.frames.size)
            var last: StepResult? = null
            for (f in step.frames) {
                val rgb = pre.resizeCrop(f, golden.width, golden.height)
                last = if (m.rawFrame) session.step(rgb) else session.step(pre.normalize(rgb))
            }
            val logits = last!!.logits
            assertArrayEquals("${m.name} step $i logits", step.logits, logits, 0f)
            val top = Scores.ranked(logits, bundle.labels, 5)
            assertEquals(step.top5.map { it.int("index") }, top.map { it.index })
            assertEquals("${m.name} step $i labels", step.top5.map { it.str("label") }, top.map { it.label })
            val probTop = Scores.topK(Scores.softmax(logits), 5).toList()
            assertEquals("softmax keeps the order", top.map { it.index }, probTop)
        }
        assertEquals(golden.steps.size * golden.framesPerStep, runtime.calls)
        val expectInputs = if (m.form == Form.CLIP) TensorNames.CLIP else TensorNames.FRAME
        assertEquals(List(golden.steps.size) { expectInputs }, runtime.checkedInputs)
        session.reset()
        for (s in m.states) {
            val back = if (s.dtype == "int8") session.byteState(s.name).all { it.toInt() == s.initValue }
            else session.state(s.name).all { it == 0f }
            assertTrue("reset returns ${s.name} to ${s.initValue}", back)
        }
    }

    @Test
    fun goldenStateSummariesChainStepToStep() = eachBundle { bundle, golden ->
        val m = bundle.manifest
        for (s in m.states) {
            for (i in 1 until golden.steps.size) {
                val prev = golden.steps[i - 1].stateOut.getValue(s.output)
                val cur = golden.steps[i].stateIn.getValue(s.name)
                assertEquals("${s.name}: state_in[$i].sum == state_out[${i - 1}].sum", prev.sum, cur.sum, 0.0)
                assertArrayEquals(prev.values, cur.values, 0.0)
            }
            assertEquals(s.shape.toList(), golden.steps[0].stateIn.getValue(s.name).shape.toList())
        }
    }

    @Test
    fun labelsFileMapsEveryClass() = eachBundle { bundle, golden ->
        assertEquals(bundle.manifest.numClasses, bundle.labels.size)
        for (step in golden.steps) for (t in step.top5) assertEquals(t.str("label"), bundle.labels[t.int("index")])
    }

    @Test
    fun pipelineRunsGoldenFramesEndToEnd() = eachBundle { bundle, golden ->
        val m = bundle.manifest
        val pipeline = DemoPipeline(m, ReplayRuntime(m, golden), bundle.labels, smoothing = 1f)
        val frames = golden.steps.flatMap { it.frames }
        var last: Prediction? = null
        for (f in frames) last = pipeline.onRgbFrame(f, golden.width, golden.height)
        val expected = golden.steps.last().top5.map { it.str("label") }
        assertEquals(expected, last!!.top.map { it.label })
        assertEquals(frames.size - 1, last.step)
        pipeline.reset()
        assertEquals(0, pipeline.session.steps)
    }
}
