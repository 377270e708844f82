import Foundation

/// Camera pixels -> model input, exactly as the manifest says. Float arithmetic in the exporter's order, so a
/// frame already at the model size gives the same tensor bit for bit.
public struct Preprocessor {
    public let pre: Preprocessing
    private let lo: Float
    private let scale: Float

    public init(_ pre: Preprocessing) {
        self.pre = pre
        lo = Float(pre.valueRange[0])
        scale = Float(pre.valueRange[1] - pre.valueRange[0])
    }

    /// The source rectangle "resize the shorter side, then centre crop" keeps, for a `srcW` x `srcH` image.
    public func cropRect(srcW: Int, srcH: Int) -> (x: Double, y: Double, width: Double, height: Double) {
        let s: Double
        if let short = pre.resizeShorter {
            s = Double(short) / Double(min(srcW, srcH))
        } else {
            s = max(Double(pre.width) / Double(srcW), Double(pre.height) / Double(srcH))
        }
        let w = min(Double(srcW), Double(pre.width) / s)
        let h = min(Double(srcH), Double(pre.height) / s)
        return ((Double(srcW) - w) / 2, (Double(srcH) - h) / 2, w, h)
    }

    /// Interleaved 8-bit pixels (e.g. a BGRA camera buffer: `channels` 4, `rgbOffsets` [2, 1, 0]) of any size ->
    /// RGB uint8 HWC at the model size: centre crop, bilinear with half-pixel centres.
    public func resizeCrop(pixels: UnsafePointer<UInt8>, width srcW: Int, height srcH: Int, bytesPerRow: Int,
                           channels: Int, rgbOffsets: [Int]) -> [UInt8] {
        let r = cropRect(srcW: srcW, srcH: srcH)
        let w = pre.width
        let h = pre.height
        var out = [UInt8](repeating: 0, count: 3 * w * h)
        let sx = r.width / Double(w)
        let sy = r.height / Double(h)
        for oy in 0..<h {
            let fy = min(max(r.y + (Double(oy) + 0.5) * sy - 0.5, 0), Double(srcH - 1))
            let y0 = Int(fy)
            let y1 = min(y0 + 1, srcH - 1)
            let wy = fy - Double(y0)
            for ox in 0..<w {
                let fx = min(max(r.x + (Double(ox) + 0.5) * sx - 0.5, 0), Double(srcW - 1))
                let x0 = Int(fx)
                let x1 = min(x0 + 1, srcW - 1)
                let wx = fx - Double(x0)
                for c in 0..<3 {
                    let o = rgbOffsets[c]
                    func px(_ x: Int, _ y: Int) -> Double { Double(pixels[y * bytesPerRow + x * channels + o]) }
                    let a = px(x0, y0) * (1 - wx) + px(x1, y0) * wx
                    let b = px(x0, y1) * (1 - wx) + px(x1, y1) * wx
                    out[3 * (oy * w + ox) + c] = UInt8(max(0, min(255, (a * (1 - wy) + b * wy).rounded())))
                }
            }
        }
        return out
    }

    /// RGB uint8 HWC at the model size -> Float NCHW `[1, 3, H, W]` (flat).
    public func normalize(_ rgb: [UInt8]) -> [Float] {
        let hw = pre.height * pre.width
        precondition(rgb.count == 3 * hw, "expected \(3 * hw) RGB bytes, got \(rgb.count)")
        var out = [Float](repeating: 0, count: 3 * hw)
        for c in 0..<3 {
            let m = pre.mean[c]
            let s = pre.std[c]
            for p in 0..<hw {
                let x = Float(rgb[3 * p + c]) / 255 * scale + lo
                out[c * hw + p] = (x - m) / s
            }
        }
        return out
    }
}
