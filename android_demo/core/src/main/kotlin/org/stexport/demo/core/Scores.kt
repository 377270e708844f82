package org.stexport.demo.core

import kotlin.math.exp

/** One row of the top-k list. */
data class Ranked(val index: Int, val label: String, val score: Float)

/** `labels.txt`: one label per line, line i is class i. */
class Labels(val names: List<String>) {
    operator fun get(i: Int): String = names.getOrElse(i) { "class_$i" }

    val size: Int get() = names.size

    companion object {
        fun parse(text: String): Labels = Labels(text.lines().map { it.trimEnd('\r') }.filter { it.isNotBlank() })
    }
}

object Scores {
    /** Numerically stable softmax. */
    fun softmax(logits: FloatArray): FloatArray {
        var m = Float.NEGATIVE_INFINITY
        for (v in logits) if (v > m) m = v
        val out = FloatArray(logits.size)
        var sum = 0.0
        for (i in logits.indices) {
            val e = exp((logits[i] - m).toDouble())
            out[i] = e.toFloat()
            sum += e
        }
        for (i in out.indices) out[i] = (out[i] / sum).toFloat()
        return out
    }

    /** Indices of the [k] largest values, largest first (ties: lower index first). */
    fun topK(values: FloatArray, k: Int): IntArray =
        values.indices.sortedWith(compareByDescending<Int> { values[it] }.thenBy { it }).take(k).toIntArray()

    fun ranked(values: FloatArray, labels: Labels, k: Int = 5): List<Ranked> =
        topK(values, k).map { Ranked(it, labels[it], values[it]) }
}

/**
 * Exponential moving average of class probabilities, so the top-5 on screen does not flicker frame to frame.
 * `alpha` is the weight of the newest frame (1 = no smoothing).
 */
class Smoother(private val alpha: Float = 0.3f) {
    private var avg: FloatArray? = null

    init {
        require(alpha > 0f && alpha <= 1f) { "alpha must be in (0, 1]" }
    }

    fun update(probs: FloatArray): FloatArray {
        val a = avg
        val next = if (a == null || a.size != probs.size) probs.copyOf()
        else FloatArray(probs.size) { a[it] + alpha * (probs[it] - a[it]) }
        avg = next
        return next
    }

    fun reset() {
        avg = null
    }
}

/** Keeps every `frame_stride`-th camera frame (the manifest's temporal sampling). */
class FrameGate(private val stride: Int) {
    private var seen = 0L

    init {
        require(stride >= 1) { "frame_stride must be >= 1" }
    }

    fun accept(): Boolean = (seen++ % stride) == 0L

    fun reset() {
        seen = 0
    }
}

/** Running mean of the per-frame time, for the "ms / frame" readout. */
class MsMeter(private val window: Int = 30) {
    private val times = ArrayDeque<Double>()

    fun add(ms: Double): Double {
        times.addLast(ms)
        while (times.size > window) times.removeFirst()
        return mean
    }

    val mean: Double get() = if (times.isEmpty()) 0.0 else times.sum() / times.size

    fun reset() = times.clear()
}
