package org.stexport.demo.core

/**
 * The inference engine behind a session (LiteRT on Android, a replay stub in tests): takes every input by name
 * (flat float32, shapes as in the manifest) and returns every output by name.
 */
fun interface ModelRuntime {
    fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray>

    /**
     * An integer-boundary bundle ([ModelManifest.integerBoundary]): every tensor in its manifest dtype, float32 as
     * [FloatArray], uint8 and int8 as [ByteArray] (the bytes as stored). Runtimes that run such bundles override it.
     */
    fun runTyped(inputs: Map<String, Any>): Map<String, Any> =
        throw UnsupportedOperationException("this runtime runs float32 tensors only; an integer-boundary bundle " +
            "(uint8 frame, int8 states) needs ModelRuntime.runTyped")
}

/** A fed tensor that does not match the manifest (name, shape, dtype) or is not finite; the state is unchanged. */
class InputException(message: String) : IllegalArgumentException(message)

/** One step's result: raw logits `[num_classes]` and the wall time of [ModelRuntime.run] in milliseconds. */
class StepResult(val step: Int, val logits: FloatArray, val millis: Double)

/**
 * Last `T` preprocessed frames, zero before the first one arrives, packed in the manifest's clip layout.
 * Used for clip-form bundles (input `clip`); stream-form bundles of clip models do this inside the model.
 */
class ClipRing(val frames: Int, val frameSize: Int, val layout: String) {
    private val ring = Array(frames) { FloatArray(frameSize) }
    private var next = 0

    init {
        require(layout in LAYOUTS) { "unknown clip layout '$layout' (known: $LAYOUTS)" }
        require(frameSize % 3 == 0) { "a frame is 3 x H x W floats" }
    }

    fun reset() {
        ring.forEach { it.fill(0f) }
        next = 0
    }

    fun push(frame: FloatArray) {
        require(frame.size == frameSize) { "frame has ${frame.size} floats, expected $frameSize" }
        frame.copyInto(ring[next])
        next = (next + 1) % frames
    }

    /** Oldest frame first. `N(T*C)HW`: channel t*3+c; `N(C*T)HW` and `NCTHW`: channel c*T+t. */
    fun packed(out: FloatArray = FloatArray(frames * frameSize)): FloatArray {
        val hw = frameSize / 3
        for (t in 0 until frames) {
            val f = ring[(next + t) % frames]
            for (c in 0 until 3) {
                val ch = if (layout == "N(T*C)HW") t * 3 + c else c * frames + t
                System.arraycopy(f, c * hw, out, ch * hw, hw)
            }
        }
        return out
    }

    companion object {
        val LAYOUTS = listOf("N(T*C)HW", "N(C*T)HW", "NCTHW")
    }
}

/**
 * The frame loop every model shares. Stream form: feed `frame` and every state, then carry each state's output
 * (`<state>_out`) back as that state for the next step; all states start at zero and [reset] zeroes them.
 * Clip form: keep a ring of the last `num_frames` frames and feed it as `clip`.
 */
class StreamSession(
    val manifest: ModelManifest,
    private val runtime: ModelRuntime,
    private val clock: () -> Long = System::nanoTime,
) {
    private val frameSize = 3 * manifest.preprocessing.height * manifest.preprocessing.width
    private val states = LinkedHashMap<String, Any>()  // FloatArray (float32) or ByteArray (int8)
    private val ring: ClipRing? =
        if (manifest.form == Form.CLIP) ClipRing(manifest.numFrames, frameSize, manifest.clipLayout) else null

    /** Steps run since the last reset. */
    var steps = 0
        private set

    init {
        reset()
    }

    fun reset() {
        states.clear()
        for (s in manifest.states) {  // an int8 state starts at its zero point, the integer that means 0.0
            states[s.name] = if (s.dtype == "int8") ByteArray(s.size) { s.initValue.toByte() } else FloatArray(s.size)
        }
        ring?.reset()
        steps = 0
    }

    /** The current value of float32 state [name] (for tests and debugging). */
    fun state(name: String): FloatArray = (states[name] ?: throw IllegalArgumentException("no state '$name'"))
        as? FloatArray ?: throw IllegalArgumentException("state '$name' is int8: read it with byteState")

    /** The current value of int8 state [name] (integer boundary). */
    fun byteState(name: String): ByteArray = (states[name] ?: throw IllegalArgumentException("no state '$name'"))
        as? ByteArray ?: throw IllegalArgumentException("state '$name' is float32: read it with state")

    private val expected: String
        get() = if (manifest.rawFrame) {
            "${TensorNames.FRAME}: uint8 [1, ${manifest.preprocessing.height}, ${manifest.preprocessing.width}, 3] " +
                "($frameSize RGB bytes)"
        } else {
            "${TensorNames.FRAME}: float32 [1, 3, ${manifest.preprocessing.height}, " +
                "${manifest.preprocessing.width}] ($frameSize values), finite"
        }

    /**
     * Checks one preprocessed frame against the manifest: [frameSize] values, all finite (one cheap pass).
     * Throws [InputException] saying what was expected; nothing has been fed yet, so the state is unchanged.
     */
    fun checkFrame(frame: FloatArray) {
        if (manifest.rawFrame) {
            throw InputException("frame is float32; expected $expected (the graph preprocesses); the state is unchanged")
        }
        if (frame.size != frameSize) {
            throw InputException("frame has ${frame.size} values; expected $expected; the state is unchanged")
        }
        for (i in frame.indices) {
            if (!frame[i].isFinite()) {
                throw InputException("frame holds ${frame[i]} at $i; expected $expected; the state is unchanged")
            }
        }
    }

    /** Checks one uint8 RGB frame (integer boundary): `H * W * 3` bytes. */
    fun checkFrame(frame: ByteArray) {
        if (!manifest.rawFrame) {
            throw InputException("frame is uint8 bytes; expected $expected (preprocess it); the state is unchanged")
        }
        if (frame.size != frameSize) {
            throw InputException("frame has ${frame.size} values; expected $expected; the state is unchanged")
        }
    }

    /**
     * Named feeds, as the contract names them: exactly `frame`, a [FloatArray] (float32), or a [ByteArray] of RGB
     * bytes for an integer boundary.
     */
    fun stepFeeds(feeds: Map<String, Any>): StepResult {
        if (feeds.keys != setOf(TensorNames.FRAME)) {
            throw InputException("step takes {$expected}, got inputs ${feeds.keys.sorted()}; the state is unchanged")
        }
        val frame = feeds.getValue(TensorNames.FRAME)
        if (manifest.rawFrame && frame is ByteArray) return step(frame)
        if (frame !is FloatArray || manifest.rawFrame) {
            val want = if (manifest.rawFrame) "uint8 bytes (ByteArray)" else "float32"
            throw InputException("frame is a ${frame::class.simpleName}, not $want; expected $expected; " +
                "the state is unchanged")
        }
        return step(frame)
    }

    /** Run one preprocessed frame (float32 NCHW `[1, 3, H, W]`, flat); refused ([InputException]) if it is not. */
    fun step(frame: FloatArray): StepResult {
        checkFrame(frame)
        if (ring != null) {
            ring.push(frame)
            return run(mapOf(TensorNames.CLIP to ring.packed()))
        }
        return run(mapOf(TensorNames.FRAME to frame))
    }

    /**
     * Run one uint8 RGB frame (integer boundary: NHWC `[1, H, W, 3]`, the camera's bytes at the model size, the
     * graph preprocesses them); refused ([InputException]) if the bundle takes float32 frames or the size is wrong.
     */
    fun step(frame: ByteArray): StepResult {
        checkFrame(frame)
        return run(mapOf(TensorNames.FRAME to frame))
    }

    /** A float32 bundle: every input is a [FloatArray] (the session made them). */
    @Suppress("UNCHECKED_CAST")
    private fun runFloat(inputs: Map<String, Any>): Map<String, Any> = runtime.run(inputs as Map<String, FloatArray>)

    private fun run(fed: Map<String, Any>): StepResult {
        val inputs = LinkedHashMap<String, Any>(fed)
        if (ring == null) for (s in manifest.states) inputs[s.name] = states.getValue(s.name)
        val t0 = clock()
        val outputs = if (manifest.integerBoundary) runtime.runTyped(inputs) else runFloat(inputs)
        val millis = (clock() - t0) / 1e6
        val logits = outputs[TensorNames.LOGITS] as? FloatArray
            ?: throw IllegalStateException("runtime returned no float32 'logits'")
        require(logits.size == manifest.numClasses) { "logits has ${logits.size} values, not ${manifest.numClasses}" }
        val carried = HashMap<String, Any>()
        for (s in manifest.states) {
            val out = outputs[s.output] ?: throw IllegalStateException("runtime returned no '${s.output}'")
            val size = when (out) {
                is FloatArray -> if (s.dtype == "float32") out.size else -1
                is ByteArray -> if (s.dtype == "int8") out.size else -1
                else -> -1
            }
            require(size == s.size) { "${s.output} is not ${s.dtype} x ${s.size}, as state ${s.name} needs" }
            carried[s.name] = out
        }
        states.putAll(carried)
        steps += 1
        return StepResult(steps - 1, logits, millis)
    }
}
