package org.stexport.demo

import androidx.camera.core.ImageProxy
import org.stexport.demo.core.YuvPlanes
import java.nio.ByteBuffer

/** Copies a CameraX YUV_420_888 frame into reusable arrays for the core's preprocessing (no Android types there). */
class CameraFrames {
    private var y = ByteArray(0)
    private var u = ByteArray(0)
    private var v = ByteArray(0)

    fun planes(image: ImageProxy): YuvPlanes {
        val p = image.planes
        y = copy(p[0].buffer, y)
        u = copy(p[1].buffer, u)
        v = copy(p[2].buffer, v)
        return YuvPlanes(
            width = image.width,
            height = image.height,
            y = y,
            yRowStride = p[0].rowStride,
            u = u,
            v = v,
            uvRowStride = p[1].rowStride,
            uvPixelStride = p[1].pixelStride,
        )
    }

    private fun copy(src: ByteBuffer, reuse: ByteArray): ByteArray {
        src.rewind()
        val out = if (reuse.size == src.remaining()) reuse else ByteArray(src.remaining())
        src.get(out)
        return out
    }
}
