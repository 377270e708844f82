package org.stexport.demo.core

/** Every `manifest.json` key the apps read; CI checks each one against a real exported manifest. */
object ManifestKeys {
    const val MODEL = "model"
    const val NAME = "name"
    const val NUM_CLASSES = "num_classes"
    const val NUM_FRAMES = "num_frames"
    const val FORM = "form"
    const val TARGET = "target"
    const val ARTIFACT = "artifact"
    const val FILE = "file"
    const val PREPROCESSING = "preprocessing"
    const val SIZE = "size"
    const val VALUE_RANGE = "value_range"
    const val MEAN = "mean"
    const val STD = "std"
    const val RESIZE = "resize"
    const val RESIZE_SHORTER = "resize_shorter"
    const val FPS = "fps"
    const val FRAME_STRIDE = "frame_stride"
    const val CHANNEL_ORDER = "channel_order"
    const val LABELS = "labels"
    const val INPUTS = "inputs"
    const val OUTPUTS = "outputs"
    const val STATES = "states"
    const val INPUT_ORDER = "input_order"
    const val OUTPUT_ORDER = "output_order"
    const val SHAPE = "shape"
    const val DTYPE = "dtype"
    const val LAYOUT = "layout"
    const val ROLE = "role"
    const val OUTPUT = "output"
    const val TFLITE = "tflite"
    const val SIGNATURE = "signature"
}

/** Keys of an integer-boundary manifest (`stexport --io int8`): per-tensor quantization and the integer init. */
object IntegerManifestKeys {
    const val QUANTIZATION = "quantization"
    const val SCALE = "scale"
    const val ZERO_POINT = "zero_point"
    const val INIT = "init"
    const val INIT_VALUE = "init_value"
}

/** Tensor names fixed by the stexport contract (everything else comes from the manifest). */
object TensorNames {
    const val FRAME = "frame"
    const val CLIP = "clip"
    const val LOGITS = "logits"
    const val STATE_OUTPUT_SUFFIX = "_out"
    const val DEFAULT_TFLITE_SIGNATURE = "serving_default"
}

enum class Form { STREAM, CLIP }

/** An integer tensor's quantization: real value = [scale] * (q - [zeroPoint]). */
class Quantization(val scale: Double, val zeroPoint: Int) {
    fun dequantize(q: Byte): Float = (scale * (q - zeroPoint)).toFloat()

    companion object {
        fun parse(o: JsonObj?): Quantization? = o?.let {
            Quantization(it.num(IntegerManifestKeys.SCALE), it.int(IntegerManifestKeys.ZERO_POINT))
        }
    }
}

/**
 * A named tensor of the contract: `shape` is static, data is row-major; float32, or with an integer boundary a
 * uint8 frame / int8 states carrying their [quantization].
 */
class TensorInfo(
    val name: String,
    val shape: IntArray,
    val dtype: String,
    val layout: String,
    val role: String,
    val quantization: Quantization? = null,
) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }
}

/**
 * A state carried between steps: feed output [output] back as input [name]. A float32 state starts at zero; an
 * int8 state ([dtype] "int8", as ByteArray) at its zero point ([initValue], the integer that means 0.0).
 */
class StateInfo(
    val name: String,
    val output: String,
    val shape: IntArray,
    val dtype: String = "float32",
    val quantization: Quantization? = null,
) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }
    val initValue: Int get() = quantization?.zeroPoint ?: 0
}

/**
 * How frames become the model input: resize (shorter side, then centre crop to [height] x [width]), then
 * `x = (u8 / 255 * (hi - lo) + lo - mean[c]) / std[c]` in float32, NCHW.
 */
class Preprocessing(
    val height: Int,
    val width: Int,
    val valueRange: DoubleArray,
    val mean: FloatArray,
    val std: FloatArray,
    val resize: String,
    val fps: Double?,
    val frameStride: Int,
    val channelOrder: String,
    shorterSide: Int? = null,
) {
    /** The shorter-side length before the centre crop: the manifest's `resize_shorter`, else parsed from `resize`. */
    val resizeShorter: Int? = shorterSide
        ?: Regex("shorter side to (\\d+)").find(resize)?.groupValues?.get(1)?.toInt()

    companion object {
        fun parse(p: JsonObj): Preprocessing {
            val size = p.ints(ManifestKeys.SIZE)
            require(size.size == 2) { "preprocessing.size must be [height, width]" }
            val vr = p.doubles(ManifestKeys.VALUE_RANGE)
            val mean = p.floats(ManifestKeys.MEAN)
            val std = p.floats(ManifestKeys.STD)
            require(vr.size == 2 && mean.size == 3 && std.size == 3) { "preprocessing value_range/mean/std sizes" }
            val order = p.strOrNull(ManifestKeys.CHANNEL_ORDER) ?: "RGB"
            require(order == "RGB") { "only RGB channel order is supported, manifest says $order" }
            return Preprocessing(
                size[0], size[1], vr, mean, std,
                p.strOrNull(ManifestKeys.RESIZE) ?: "shorter side, then center crop",
                p.numOrNull(ManifestKeys.FPS),
                p.numOrNull(ManifestKeys.FRAME_STRIDE)?.toInt() ?: 1,
                order,
                p.numOrNull(ManifestKeys.RESIZE_SHORTER)?.toInt(),
            )
        }
    }
}

/** What an app needs from `manifest.json` to run a bundle. */
class ModelManifest(
    val name: String,
    val numClasses: Int,
    val numFrames: Int,
    val form: Form,
    val target: String,
    val artifactFile: String,
    val labelsFile: String,
    val preprocessing: Preprocessing,
    val inputs: List<TensorInfo>,
    val outputs: List<TensorInfo>,
    val states: List<StateInfo>,
    val inputOrder: List<String>,
    val outputOrder: List<String>,
    val tfliteSignature: String,
) {
    fun input(name: String): TensorInfo = inputs.firstOrNull { it.name == name }
        ?: throw IllegalArgumentException("manifest has no input '$name' (inputs: ${inputs.map { it.name }})")

    fun output(name: String): TensorInfo = outputs.firstOrNull { it.name == name }
        ?: throw IllegalArgumentException("manifest has no output '$name' (outputs: ${outputs.map { it.name }})")

    /** Integer boundary: the frame is uint8 RGB NHWC `[1, H, W, 3]`, the preprocessing being inside the graph. */
    val rawFrame: Boolean get() = form == Form.STREAM && input(TensorNames.FRAME).dtype == "uint8"

    /** Any uint8/int8 tensor at the boundary: run through [ModelRuntime.runTyped]. */
    val integerBoundary: Boolean get() = rawFrame || states.any { it.dtype != "float32" }

    /** The packed layout of the `clip` input (clip form only), e.g. "N(T*C)HW". */
    val clipLayout: String get() = input(TensorNames.CLIP).layout

    companion object {
        fun parse(text: String): ModelManifest {
            val m = JsonObj.parse(text)
            val model = m.obj(ManifestKeys.MODEL)
            fun quant(o: JsonObj) =
                if (o.has(IntegerManifestKeys.QUANTIZATION)) Quantization.parse(o.obj(IntegerManifestKeys.QUANTIZATION))
                else null
            fun tensor(o: JsonObj) = TensorInfo(
                o.str(ManifestKeys.NAME), o.ints(ManifestKeys.SHAPE), o.strOrNull(ManifestKeys.DTYPE) ?: "float32",
                o.strOrNull(ManifestKeys.LAYOUT) ?: "", o.strOrNull(ManifestKeys.ROLE) ?: "", quant(o),
            )
            val inputs = m.objects(ManifestKeys.INPUTS).map(::tensor)
            val outputs = m.objects(ManifestKeys.OUTPUTS).map(::tensor)
            val states = m.objects(ManifestKeys.STATES).map {
                val dtype = it.strOrNull(ManifestKeys.DTYPE) ?: "float32"
                val q = quant(it)
                if (dtype == "int8") {
                    require(q != null && it.strOrNull(IntegerManifestKeys.INIT) == "zero_point") {
                        "int8 state ${it.str(ManifestKeys.NAME)} needs quantization and init zero_point"
                    }
                    val init = it.numOrNull(IntegerManifestKeys.INIT_VALUE)?.toInt() ?: q.zeroPoint
                    require(init == q.zeroPoint) { "state ${it.str(ManifestKeys.NAME)}: init_value is not its zero point" }
                }
                StateInfo(it.str(ManifestKeys.NAME), it.str(ManifestKeys.OUTPUT), it.ints(ManifestKeys.SHAPE), dtype,
                    if (dtype == "int8") q else null)
            }
            val form = when (val f = m.str(ManifestKeys.FORM)) {
                "stream" -> Form.STREAM
                "clip" -> Form.CLIP
                else -> throw IllegalArgumentException("unknown form '$f'")
            }
            val signature = if (m.has(ManifestKeys.TFLITE)) m.obj(ManifestKeys.TFLITE).str(ManifestKeys.SIGNATURE)
            else TensorNames.DEFAULT_TFLITE_SIGNATURE
            val labels = if (m.has(ManifestKeys.LABELS)) m.obj(ManifestKeys.LABELS).str(ManifestKeys.FILE) else "labels.txt"
            val manifest = ModelManifest(
                model.str(ManifestKeys.NAME), model.int(ManifestKeys.NUM_CLASSES), model.int(ManifestKeys.NUM_FRAMES),
                form, m.str(ManifestKeys.TARGET), m.obj(ManifestKeys.ARTIFACT).str(ManifestKeys.FILE), labels,
                Preprocessing.parse(m.obj(ManifestKeys.PREPROCESSING)), inputs, outputs, states,
                m.strings(ManifestKeys.INPUT_ORDER), m.strings(ManifestKeys.OUTPUT_ORDER), signature,
            )
            manifest.validate()
            return manifest
        }
    }

    /** The contract the apps rely on; a bundle that breaks it fails loudly at load time, not mid-stream. */
    fun validate() {
        val stateDtype = states.flatMap { listOf(it.name to it.dtype, it.output to it.dtype) }.toMap()
        for (t in inputs + outputs) {
            val want = if (t.name == TensorNames.FRAME && t.dtype == "uint8") "uint8" else stateDtype[t.name] ?: "float32"
            require(t.dtype == want) { "tensor ${t.name} is ${t.dtype}, not $want" }
        }
        for (s in states) require(s.dtype in listOf("float32", "int8")) { "state ${s.name} is ${s.dtype}" }
        val logits = output(TensorNames.LOGITS)
        require(logits.size == numClasses) { "logits has ${logits.size} values, model has $numClasses classes" }
        val p = preprocessing
        when (form) {
            Form.STREAM -> {
                val frame = input(TensorNames.FRAME)
                val shape = if (rawFrame) intArrayOf(1, p.height, p.width, 3) else intArrayOf(1, 3, p.height, p.width)
                require(frame.shape.contentEquals(shape)) { "frame shape ${frame.shape.toList()} != ${shape.toList()}" }
                for (s in states) {
                    require(input(s.name).shape.contentEquals(s.shape)) { "state ${s.name}: input shape mismatch" }
                    require(output(s.output).shape.contentEquals(s.shape)) { "state ${s.name}: output shape mismatch" }
                }
                require(inputOrder.toSet() == (listOf(TensorNames.FRAME) + states.map { it.name }).toSet()) {
                    "input_order $inputOrder is not frame + states"
                }
            }
            Form.CLIP -> {
                val clip = input(TensorNames.CLIP)
                require(clip.size == 3 * numFrames * p.height * p.width) { "clip input size mismatch" }
                require(clipLayout in ClipRing.LAYOUTS) { "unknown clip layout '$clipLayout'" }
                require(states.isEmpty()) { "clip form has no states" }
            }
        }
    }
}
