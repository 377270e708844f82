package org.stexport.demo.core

import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min
import kotlin.math.roundToInt

/** A rectangle in source-pixel coordinates (floating point: crops need not fall on pixel edges). */
data class CropRect(val x: Double, val y: Double, val width: Double, val height: Double)

/** The three planes of a YUV 4:2:0 image (Android's YUV_420_888), with their strides. */
class YuvPlanes(
    val width: Int,
    val height: Int,
    val y: ByteArray,
    val yRowStride: Int,
    val u: ByteArray,
    val v: ByteArray,
    val uvRowStride: Int,
    val uvPixelStride: Int,
)

/**
 * Frame preprocessing exactly as the manifest says. All arithmetic is float32 in the same order as the
 * exporter's reference (`stexport.frames.preprocess`), so a frame already at the model size gives bit-identical
 * tensors.
 */
class Preprocessor(val pre: Preprocessing) {
    val height = pre.height
    val width = pre.width
    private val lo = pre.valueRange[0].toFloat()
    private val scale = (pre.valueRange[1] - pre.valueRange[0]).toFloat()

    /** RGB uint8 HWC ([height] x [width]) -> float32 NCHW `[1, 3, H, W]` (flat). */
    fun normalize(rgb: ByteArray, out: FloatArray = FloatArray(3 * height * width)): FloatArray {
        val hw = height * width
        require(rgb.size == 3 * hw) { "expected ${3 * hw} RGB bytes for ${height}x$width, got ${rgb.size}" }
        require(out.size == 3 * hw) { "output must hold ${3 * hw} floats" }
        for (c in 0 until 3) {
            val m = pre.mean[c]
            val s = pre.std[c]
            val base = c * hw
            for (p in 0 until hw) {
                val u = (rgb[3 * p + c].toInt() and 0xFF).toFloat()
                val x = u / 255f * scale + lo
                out[base + p] = (x - m) / s
            }
        }
        return out
    }

    /** The source region that "resize the shorter side, then centre crop" keeps, for a `srcW` x `srcH` image. */
    fun cropRect(srcW: Int, srcH: Int): CropRect {
        val short = pre.resizeShorter
        val s = if (short != null) short.toDouble() / min(srcW, srcH)
        else max(width.toDouble() / srcW, height.toDouble() / srcH)
        val cw = min(srcW.toDouble(), width / s)
        val ch = min(srcH.toDouble(), height / s)
        return CropRect((srcW - cw) / 2.0, (srcH - ch) / 2.0, cw, ch)
    }

    /** RGB uint8 HWC of any size -> RGB uint8 HWC at the model size (crop, then bilinear, half-pixel centres). */
    fun resizeCrop(rgb: ByteArray, srcW: Int, srcH: Int): ByteArray {
        require(rgb.size == 3 * srcW * srcH) { "expected ${3 * srcW * srcH} RGB bytes" }
        if (srcW == width && srcH == height) return rgb.copyOf()
        val r = cropRect(srcW, srcH)
        val out = ByteArray(3 * width * height)
        val sx = r.width / width
        val sy = r.height / height
        for (oy in 0 until height) {
            val fy = clamp(r.y + (oy + 0.5) * sy - 0.5, 0.0, srcH - 1.0)
            val y0 = floor(fy).toInt()
            val y1 = min(y0 + 1, srcH - 1)
            val wy = fy - y0
            for (ox in 0 until width) {
                val fx = clamp(r.x + (ox + 0.5) * sx - 0.5, 0.0, srcW - 1.0)
                val x0 = floor(fx).toInt()
                val x1 = min(x0 + 1, srcW - 1)
                val wx = fx - x0
                for (c in 0 until 3) {
                    val a = px(rgb, srcW, x0, y0, c) * (1 - wx) + px(rgb, srcW, x1, y0, c) * wx
                    val b = px(rgb, srcW, x0, y1, c) * (1 - wx) + px(rgb, srcW, x1, y1, c) * wx
                    out[3 * (oy * width + ox) + c] = (a * (1 - wy) + b * wy).roundToInt().coerceIn(0, 255).toByte()
                }
            }
        }
        return out
    }

    /**
     * A camera frame (YUV 4:2:0, sensor orientation) -> RGB uint8 HWC at the model size, upright.
     * `rotationDegrees` (0, 90, 180, 270) is how far the sensor image must turn clockwise to be upright.
     * Full-range BT.601 (what CameraX delivers); luma bilinear, chroma nearest.
     */
    fun yuvToModelRgb(img: YuvPlanes, rotationDegrees: Int): ByteArray {
        val rot = ((rotationDegrees % 360) + 360) % 360
        require(rot % 90 == 0) { "rotation must be a multiple of 90, got $rotationDegrees" }
        val upW = if (rot == 90 || rot == 270) img.height else img.width
        val upH = if (rot == 90 || rot == 270) img.width else img.height
        val r = cropRect(upW, upH)
        val out = ByteArray(3 * width * height)
        val sx = r.width / width
        val sy = r.height / height
        for (oy in 0 until height) {
            val uy = clamp(r.y + (oy + 0.5) * sy - 0.5, 0.0, upH - 1.0)
            for (ox in 0 until width) {
                val ux = clamp(r.x + (ox + 0.5) * sx - 0.5, 0.0, upW - 1.0)
                val (fx, fy) = when (rot) {
                    90 -> Pair(uy, img.height - 1 - ux)
                    180 -> Pair(img.width - 1 - ux, img.height - 1 - uy)
                    270 -> Pair(img.width - 1 - uy, ux)
                    else -> Pair(ux, uy)
                }
                val yv = lumaBilinear(img, fx, fy)
                val cx = min((fx + 0.5).toInt() / 2, (img.width - 1) / 2)
                val cy = min((fy + 0.5).toInt() / 2, (img.height - 1) / 2)
                val ci = cy * img.uvRowStride + cx * img.uvPixelStride
                val u = (img.u[ci].toInt() and 0xFF) - 128.0
                val v = (img.v[ci].toInt() and 0xFF) - 128.0
                val o = 3 * (oy * width + ox)
                out[o] = to8(yv + 1.402 * v)
                out[o + 1] = to8(yv - 0.344136 * u - 0.714136 * v)
                out[o + 2] = to8(yv + 1.772 * u)
            }
        }
        return out
    }

    private fun lumaBilinear(img: YuvPlanes, fx: Double, fy: Double): Double {
        val x0 = floor(fx).toInt()
        val y0 = floor(fy).toInt()
        val x1 = min(x0 + 1, img.width - 1)
        val y1 = min(y0 + 1, img.height - 1)
        val wx = fx - x0
        val wy = fy - y0
        fun at(x: Int, y: Int) = (img.y[y * img.yRowStride + x].toInt() and 0xFF).toDouble()
        return (at(x0, y0) * (1 - wx) + at(x1, y0) * wx) * (1 - wy) + (at(x0, y1) * (1 - wx) + at(x1, y1) * wx) * wy
    }

    private companion object {
        fun clamp(v: Double, lo: Double, hi: Double) = max(lo, min(hi, v))
        fun px(rgb: ByteArray, w: Int, x: Int, y: Int, c: Int) = (rgb[3 * (y * w + x) + c].toInt() and 0xFF).toDouble()
        fun to8(v: Double): Byte = v.roundToInt().coerceIn(0, 255).toByte()
    }
}
