package org.stexport.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

private fun manifestText(form: String = "stream", states: Boolean = true, layout: String = "N(T*C)HW"): String {
    val stateIn = if (states) """, {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "float32", "role": "state", "init": "zeros"}""" else ""
    val stateOut = if (states) """, {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "float32", "role": "state_out"}""" else ""
    val inputs = if (form == "stream") """[{"name": "frame", "shape": [1, 3, 2, 2], "dtype": "float32", "layout": "NCHW"}$stateIn]"""
    else """[{"name": "clip", "shape": [1, 12, 2, 2], "dtype": "float32", "layout": "$layout", "role": "clip"}]"""
    val st = if (states && form == "stream") """[{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2], "dtype": "float32", "init": "zeros"}]""" else "[]"
    val order = if (form == "stream") (if (states) """["frame", "buf"]""" else """["frame"]""") else """["clip"]"""
    return """
    {"schema_version": 1,
     "model": {"name": "toy", "num_classes": 3, "num_frames": 4, "streaming": true},
     "form": "$form", "target": "tflite",
     "artifact": {"file": "toy_fp32.tflite", "bytes": 1},
     "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
                       "resize": "shorter side to 256, then center crop 224", "fps": null, "frame_stride": 2},
     "labels": {"file": "labels.txt", "source": "x", "count": 3},
     "inputs": $inputs,
     "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"}$stateOut],
     "states": $st,
     "input_order": $order, "output_order": ["logits"],
     "tflite": {"signature": "serving_default"}}
    """
}

class JsonTest {
    @Test
    fun parsesNestedValues() {
        val v = Json.parse("""{"a": [1, -2.5e1, true, null, "x\"\u00e9\n"], "b": {}}""") as Map<*, *>
        assertEquals(listOf(1.0, -25.0, true, null, "x\"\u00e9\n"), v["a"])
        assertEquals(emptyMap<String, Any?>(), v["b"])
    }

    @Test
    fun rejectsBrokenJson() {
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "{} x")) {
            assertThrows(IllegalArgumentException::class.java) { Json.parse(bad) }
        }
    }
}

class ManifestTest {
    @Test
    fun parsesStreamContract() {
        val m = ModelManifest.parse(manifestText())
        assertEquals(Form.STREAM, m.form)
        assertEquals(listOf("buf"), m.states.map { it.name })
        assertEquals("buf_out", m.states[0].output)
        assertEquals(256, m.preprocessing.resizeShorter)
        assertEquals(2, m.preprocessing.frameStride)
        assertNull(m.preprocessing.fps)
        assertEquals("serving_default", m.tfliteSignature)
        assertEquals("toy_fp32.tflite", m.artifactFile)
    }

    @Test
    fun rejectsBrokenContract() {
        val noLogits = manifestText().replace("\"name\": \"logits\"", "\"name\": \"scores\"")
        assertThrows(IllegalArgumentException::class.java) { ModelManifest.parse(noLogits) }
        val badState = manifestText().replace("\"output\": \"buf_out\"", "\"output\": \"nope\"")
        assertThrows(IllegalArgumentException::class.java) { ModelManifest.parse(badState) }
        val badLayout = manifestText(form = "clip", states = false, layout = "NTCHW")
        assertThrows(IllegalArgumentException::class.java) { ModelManifest.parse(badLayout) }
    }
}

class PreprocessTest {
    private val pre = Preprocessor(ModelManifest.parse(manifestText()).preprocessing)

    @Test
    fun normalizeFollowsTheManifestFormula() {
        val rgb = byteArrayOf(0, 128.toByte(), 255.toByte(), 10, 20, 30, 40, 50, 60, 70, 80, 90)
        val x = pre.normalize(rgb)
        val mean = floatArrayOf(0.485f, 0.456f, 0.406f)
        val std = floatArrayOf(0.229f, 0.224f, 0.225f)
        for (p in 0 until 4) for (c in 0 until 3) {
            val u = (rgb[3 * p + c].toInt() and 0xFF).toFloat()
            assertEquals((u / 255f * 1f + 0f - mean[c]) / std[c], x[c * 4 + p], 0f)
        }
        assertEquals((0f - 0.485f) / 0.229f, x[0], 0f)
        assertEquals((1f - 0.406f) / 0.225f, x[2 * 4], 0f)
    }

    @Test
    fun cropRectKeepsTheCentre() {
        val p = Preprocessor(Preprocessing(224, 224, doubleArrayOf(0.0, 1.0), FloatArray(3), FloatArray(3) { 1f },
            "shorter side to 256, then center crop 224", null, 1, "RGB"))
        val r = p.cropRect(1280, 720)
        assertEquals(720.0 * 224 / 256, r.height, 1e-9)
        assertEquals(r.height, r.width, 1e-9)
        assertEquals((1280 - r.width) / 2, r.x, 1e-9)
        val plain = Preprocessor(Preprocessing(172, 172, doubleArrayOf(0.0, 1.0), FloatArray(3), FloatArray(3) { 1f },
            "shorter side, then center crop", null, 1, "RGB"))
        val q = plain.cropRect(640, 480)
        assertEquals(CropRect(80.0, 0.0, 480.0, 480.0), q)
    }

    @Test
    fun resizeCropOfAFlatImageIsFlat() {
        val src = ByteArray(3 * 8 * 6) { (if (it % 3 == 0) 200 else 50).toByte() }
        val out = pre.resizeCrop(src, 8, 6)
        assertEquals(12, out.size)
        for (i in out.indices) assertEquals(if (i % 3 == 0) 200 else 50, out[i].toInt() and 0xFF)
    }

    @Test
    fun yuvGreyAndRed() {
        val w = 4
        val h = 4
        fun planes(y: Int, u: Int, v: Int) = YuvPlanes(w, h, ByteArray(w * h) { y.toByte() }, w,
            ByteArray(w * h / 4) { u.toByte() }, ByteArray(w * h / 4) { v.toByte() }, w / 2, 1)
        val grey = pre.yuvToModelRgb(planes(128, 128, 128), 0)
        assertTrue(grey.all { (it.toInt() and 0xFF) == 128 })
        val red = pre.yuvToModelRgb(planes(76, 85, 255), 90)
        assertTrue((red[0].toInt() and 0xFF) > 240 && (red[1].toInt() and 0xFF) < 10 && (red[2].toInt() and 0xFF) < 10)
    }

    @Test
    fun yuvRotationTurnsTheImageUpright() {
        // sensor image 4 wide x 2 high: left half dark, right half bright. Rotated 90 degrees clockwise it is
        // 2 wide x 4 high with the bright half at the bottom.
        val w = 4
        val h = 2
        val y = ByteArray(w * h) { if (it % w >= 2) 250.toByte() else 10 }
        val img = YuvPlanes(w, h, y, w, ByteArray(4) { 128.toByte() }, ByteArray(4) { 128.toByte() }, 2, 1)
        val p = Preprocessor(Preprocessing(4, 2, doubleArrayOf(0.0, 1.0), FloatArray(3), FloatArray(3) { 1f },
            "shorter side, then center crop", null, 1, "RGB"))
        val out = p.yuvToModelRgb(img, 90)
        val top = out[0].toInt() and 0xFF
        val bottom = out[3 * (3 * 2)].toInt() and 0xFF
        assertTrue("top $top bottom $bottom", top < 60 && bottom > 200)
        val out270 = p.yuvToModelRgb(img, 270)
        assertTrue((out270[0].toInt() and 0xFF) > 200)
    }
}

class ClipRingTest {
    private fun frame(v: Float) = FloatArray(3 * 4) { c -> v + (c / 4) * 0.1f }

    @Test
    fun packsOldestFirstInEitherLayout() {
        val tc = ClipRing(3, 12, "N(T*C)HW")
        tc.push(frame(1f))
        tc.push(frame(2f))
        val a = tc.packed()
        // window = [zero, f1, f2]; channel t*3+c
        assertEquals(0f, a[0], 0f)
        assertEquals(1f, a[(1 * 3 + 0) * 4], 0f)
        assertEquals(2.2f, a[(2 * 3 + 2) * 4], 1e-6f)
        val ct = ClipRing(3, 12, "N(C*T)HW")
        ct.push(frame(1f))
        ct.push(frame(2f))
        ct.push(frame(3f))
        ct.push(frame(4f))
        val b = ct.packed()
        // window = [f2, f3, f4]; channel c*3+t
        assertEquals(2f, b[0], 0f)
        assertEquals(4.1f, b[(1 * 3 + 2) * 4], 1e-6f)
        assertArrayEquals(b, ClipRing(3, 12, "NCTHW").apply { push(frame(2f)); push(frame(3f)); push(frame(4f)) }.packed(), 0f)
        ct.reset()
        assertTrue(ct.packed().all { it == 0f })
    }

    @Test
    fun clipFormSessionFeedsTheWindow() {
        val m = ModelManifest.parse(manifestText(form = "clip", states = false))
        val seen = mutableListOf<FloatArray>()
        val s = StreamSession(m, ModelRuntime { inputs ->
            assertEquals(setOf("clip"), inputs.keys)
            seen += inputs.getValue("clip").copyOf()
            mapOf("logits" to floatArrayOf(0f, 1f, 2f))
        })
        repeat(5) { s.step(FloatArray(12) { _ -> it + 1f }) }
        assertEquals(5, seen.size)
        // after 5 frames the window holds frames 2..5 (values 2, 3, 4, 5), N(T*C)HW
        assertEquals(2f, seen[4][0], 0f)
        assertEquals(5f, seen[4][3 * 3 * 4], 0f)
        assertEquals(0f, seen[0][0], 0f)
    }
}

class SessionTest {
    @Test
    fun carriesStateOutputsBackAndResets() {
        val m = ModelManifest.parse(manifestText())
        var calls = 0
        val s = StreamSession(m, ModelRuntime { inputs ->
            val buf = inputs.getValue("buf")
            assertEquals(calls.toFloat(), buf[0], 0f)
            calls++
            mapOf("logits" to floatArrayOf(buf[0], 0f, 1f), "buf_out" to FloatArray(8) { buf[0] + 1f })
        })
        repeat(3) { s.step(FloatArray(12)) }
        assertEquals(3f, s.state("buf")[0], 0f)
        s.reset()
        calls = 0
        assertEquals(0, s.steps)
        s.step(FloatArray(12))
        assertThrows(IllegalArgumentException::class.java) { s.step(FloatArray(5)) }
    }

    @Test
    fun missingStateOutputIsAnError() {
        val m = ModelManifest.parse(manifestText())
        val s = StreamSession(m, ModelRuntime { mapOf("logits" to FloatArray(3)) })
        assertThrows(IllegalStateException::class.java) { s.step(FloatArray(12)) }
    }
}

class ScoresTest {
    @Test
    fun softmaxTopKAndLabels() {
        val p = Scores.softmax(floatArrayOf(1f, 3f, 2f, 3f))
        assertEquals(1.0, p.sum().toDouble(), 1e-6)
        assertArrayEquals(intArrayOf(1, 3, 2), Scores.topK(p, 3))
        val labels = Labels.parse("a\nb\r\nc\n\n")
        assertEquals(listOf("a", "b", "c"), labels.names)
        assertEquals("class_7", labels[7])
        assertEquals(listOf("b", "class_3"), Scores.ranked(p, labels, 2).map { it.label })
    }

    @Test
    fun smootherAveragesAndResets() {
        val s = Smoother(0.5f)
        assertArrayEquals(floatArrayOf(1f, 0f), s.update(floatArrayOf(1f, 0f)), 0f)
        assertArrayEquals(floatArrayOf(0.5f, 0.5f), s.update(floatArrayOf(0f, 1f)), 1e-6f)
        s.reset()
        assertArrayEquals(floatArrayOf(0f, 1f), s.update(floatArrayOf(0f, 1f)), 0f)
    }

    @Test
    fun frameGateAndMeter() {
        val g = FrameGate(2)
        assertEquals(listOf(true, false, true, false), List(4) { g.accept() })
        val m = MsMeter(2)
        m.add(10.0)
        m.add(20.0)
        assertEquals(25.0, m.add(30.0), 1e-9)
        assertFalse(m.mean == 0.0)
    }
}

/** Returns fixed logits and every state's output as the state input plus one (so carried state is visible). */
private class CountingRuntime(private val m: ModelManifest) : ModelRuntime {
    var calls = 0
    override fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray> {
        calls += 1
        val out = HashMap<String, FloatArray>()
        out[TensorNames.LOGITS] = FloatArray(m.numClasses) { it.toFloat() }
        for (s in m.states) out[s.output] = FloatArray(s.size) { i -> inputs.getValue(s.name)[i] + 1f }
        return out
    }
}

class InputCheckTest {
    private val manifest = ModelManifest.parse(manifestText())
    private fun frame(value: Float = 0.5f) = FloatArray(3 * 2 * 2) { value }

    @Test
    fun refusesAFrameOfTheWrongSize() {
        val rt = CountingRuntime(manifest)
        val session = StreamSession(manifest, rt)
        val e = assertThrows(InputException::class.java) { session.step(FloatArray(11)) }
        assertTrue(e.message!!, e.message!!.contains("frame has 11 values; expected frame: float32 [1, 3, 2, 2]"))
        assertEquals(0, rt.calls)
    }

    @Test
    fun refusesANonFiniteFrameAndKeepsTheState() {
        for (bad in listOf(Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY)) {
            val rt = CountingRuntime(manifest)
            val session = StreamSession(manifest, rt)
            session.step(frame())
            val before = session.state("buf").copyOf()
            val poisoned = frame()
            poisoned[5] = bad
            val e = assertThrows(InputException::class.java) { session.step(poisoned) }
            assertTrue(e.message!!.contains("the state is unchanged"))
            assertArrayEquals(before, session.state("buf"), 0f)
            assertEquals(1, rt.calls)
            assertEquals(1, session.steps)
            session.step(frame())
            assertArrayEquals(FloatArray(8) { 2f }, session.state("buf"), 0f)
        }
    }

    @Test
    fun refusesWrongNamesAndDtypes() {
        val session = StreamSession(manifest, CountingRuntime(manifest))
        val named = assertThrows(InputException::class.java) { session.stepFeeds(mapOf("image" to frame())) }
        assertTrue(named.message!!, named.message!!.contains("got inputs [image]"))
        assertThrows(InputException::class.java) {
            session.stepFeeds(mapOf(TensorNames.FRAME to frame(), "buf" to FloatArray(8)))
        }
        val typed = assertThrows(InputException::class.java) {
            session.stepFeeds(mapOf(TensorNames.FRAME to IntArray(12)))
        }
        assertTrue(typed.message!!, typed.message!!.contains("IntArray, not float32"))
        assertEquals(0, session.steps)
        assertEquals(0, session.stepFeeds(mapOf(TensorNames.FRAME to frame())).step)
    }

    @Test
    fun resetZeroesTheState() {
        val session = StreamSession(manifest, CountingRuntime(manifest))
        session.step(frame())
        session.step(frame())
        assertArrayEquals(FloatArray(8) { 2f }, session.state("buf"), 0f)
        session.reset()
        assertArrayEquals(FloatArray(8), session.state("buf"), 0f)
        assertEquals(0, session.steps)
    }
}

/** An integer-boundary manifest (`stexport --io int8`): uint8 NHWC frame, an int8 buffer state, a float32 mean. */
private const val INT8_MANIFEST = """
{"schema_version": 1, "io": "int8",
 "model": {"name": "toy8", "num_classes": 3, "num_frames": 4, "streaming": true},
 "form": "stream", "target": "tflite", "artifact": {"file": "toy8_int8.tflite", "bytes": 1},
 "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0, 0, 0], "std": [1, 1, 1],
                   "tensor_layout": "NHWC uint8", "folded_into_graph": true},
 "inputs": [{"name": "frame", "shape": [1, 2, 2, 3], "dtype": "uint8", "layout": "NHWC", "role": "frame",
             "quantization": {"scale": 1.0, "zero_point": 0}},
            {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "int8", "role": "state", "init": "zero_point",
             "init_value": -117, "quantization": {"scale": 0.0336, "zero_point": -117}},
            {"name": "mean", "shape": [1, 2], "dtype": "float32", "role": "state", "init": "zeros"}],
 "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"},
             {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8", "role": "state_out",
              "quantization": {"scale": 0.0336, "zero_point": -117}},
             {"name": "mean_out", "shape": [1, 2], "dtype": "float32", "role": "state_out"}],
 "states": [{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8", "init": "zero_point",
             "kind": "buffer", "init_value": -117, "quantization": {"scale": 0.0336, "zero_point": -117}},
            {"name": "mean", "output": "mean_out", "shape": [1, 2], "dtype": "float32", "init": "zeros",
             "kind": "accumulator"}],
 "input_order": ["frame", "buf", "mean"], "output_order": ["logits", "buf_out", "mean_out"]}
"""

/** Typed runtime: int8 state + 1 (so the carried state is visible), float32 state + 0.5, logits from the frame. */
private class TypedCountingRuntime : ModelRuntime {
    var calls = 0
    val frames = mutableListOf<ByteArray>()
    override fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray> = throw AssertionError("float path")
    override fun runTyped(inputs: Map<String, Any>): Map<String, Any> {
        calls += 1
        frames += (inputs.getValue("frame") as ByteArray).copyOf()
        val buf = inputs.getValue("buf") as ByteArray
        val mean = inputs.getValue("mean") as FloatArray
        return mapOf(
            "logits" to floatArrayOf(0f, 1f, 2f),
            "buf_out" to ByteArray(buf.size) { (buf[it] + 1).toByte() },
            "mean_out" to FloatArray(mean.size) { mean[it] + 0.5f },
        )
    }
}

class IntegerBoundaryTest {
    private val m = ModelManifest.parse(INT8_MANIFEST)

    @Test
    fun readsDtypesQuantizationAndZeroPointInit() {
        assertTrue(m.rawFrame && m.integerBoundary)
        val buf = m.states.first { it.name == "buf" }
        assertEquals("int8", buf.dtype)
        assertEquals(-117, buf.initValue)
        assertEquals(0.0336, buf.quantization!!.scale, 0.0)
        assertEquals(0f, buf.quantization!!.dequantize((-117).toByte()), 0f)
        assertEquals(0.0336f, buf.quantization!!.dequantize((-116).toByte()), 1e-7f)
        assertEquals(0, m.states.first { it.name == "mean" }.initValue)
        assertFalse(ModelManifest.parse(manifestText()).integerBoundary)
    }

    @Test
    fun startsAtTheZeroPointCarriesBytesAndResets() {
        val rt = TypedCountingRuntime()
        val s = StreamSession(m, rt)
        assertArrayEquals(ByteArray(8) { -117 }, s.byteState("buf"))
        val rgb = ByteArray(12) { (200 + it).toByte() }  // raw RGB bytes, values above 127 included
        repeat(3) { s.stepFeeds(mapOf(TensorNames.FRAME to rgb)) }
        assertArrayEquals(rgb, rt.frames[0])  // fed as they are: the graph preprocesses
        assertArrayEquals(ByteArray(8) { -114 }, s.byteState("buf"))
        assertArrayEquals(floatArrayOf(1.5f, 1.5f), s.state("mean"), 0f)
        s.reset()
        assertArrayEquals(ByteArray(8) { -117 }, s.byteState("buf"))
        assertArrayEquals(FloatArray(2), s.state("mean"), 0f)
    }

    @Test
    fun refusesFloatFramesAndWrongSizes() {
        val rt = TypedCountingRuntime()
        val s = StreamSession(m, rt)
        val f = assertThrows(InputException::class.java) { s.step(FloatArray(12)) }
        assertTrue(f.message!!, f.message!!.contains("expected frame: uint8 [1, 2, 2, 3] (12 RGB bytes)"))
        val n = assertThrows(InputException::class.java) { s.step(ByteArray(11)) }
        assertTrue(n.message!!, n.message!!.contains("frame has 11 values"))
        assertThrows(InputException::class.java) { s.stepFeeds(mapOf(TensorNames.FRAME to FloatArray(12))) }
        assertEquals(0, rt.calls)
        assertArrayEquals(ByteArray(8) { -117 }, s.byteState("buf"))
        val plain = StreamSession(ModelManifest.parse(manifestText()), CountingRuntime(ModelManifest.parse(manifestText())))
        assertThrows(InputException::class.java) { plain.step(ByteArray(12)) }
    }

    @Test
    fun aFloatOnlyRuntimeCannotRunAnIntegerBundle() {
        val s = StreamSession(m, ModelRuntime { mapOf("logits" to FloatArray(3)) })
        assertThrows(UnsupportedOperationException::class.java) { s.step(ByteArray(12)) }
    }

    @Test
    fun rejectsAnInt8StateWithoutItsZeroPoint() {
        val broken = INT8_MANIFEST.replace("\"init_value\": -117, ", "\"init_value\": 0, ")
        assertThrows(IllegalArgumentException::class.java) { ModelManifest.parse(broken) }
    }
}
