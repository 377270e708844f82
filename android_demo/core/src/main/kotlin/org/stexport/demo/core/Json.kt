package org.stexport.demo.core

/**
 * A small, strict JSON reader (RFC 8259) so the core runs on a plain JVM and on Android alike.
 *
 * Values map to: object -> Map<String, Any?> (insertion ordered), array -> List<Any?>, number -> Double,
 * string -> String, true/false -> Boolean, null -> null.
 */
object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (!p.atEnd()) p.fail("trailing characters")
        return v
    }

    private class Parser(private val s: String) {
        private var i = 0

        fun atEnd() = i >= s.length

        fun fail(msg: String): Nothing = throw IllegalArgumentException("JSON: $msg at offset $i")

        fun skipWs() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++
        }

        fun value(): Any? {
            if (atEnd()) fail("unexpected end")
            return when (val c = s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') num() else fail("unexpected '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) fail("expected $word")
            i += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            i++
            skipWs()
            if (i < s.length && s[i] == '}') { i++; return m }
            while (true) {
                skipWs()
                if (atEnd() || s[i] != '"') fail("expected a key")
                val k = str()
                skipWs()
                if (atEnd() || s[i] != ':') fail("expected ':'")
                i++
                skipWs()
                m[k] = value()
                skipWs()
                if (atEnd()) fail("unterminated object")
                when (s[i]) {
                    ',' -> i++
                    '}' -> { i++; return m }
                    else -> fail("expected ',' or '}'")
                }
            }
        }

        private fun arr(): List<Any?> {
            val a = ArrayList<Any?>()
            i++
            skipWs()
            if (i < s.length && s[i] == ']') { i++; return a }
            while (true) {
                skipWs()
                a.add(value())
                skipWs()
                if (atEnd()) fail("unterminated array")
                when (s[i]) {
                    ',' -> i++
                    ']' -> { i++; return a }
                    else -> fail("expected ',' or ']'")
                }
            }
        }

        private fun str(): String {
            i++
            val sb = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (atEnd()) fail("bad escape")
                        when (val e = s[i++]) {
                            '"', '\\', '/' -> sb.append(e)
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("bad unicode escape")
                                sb.append(s.substring(i, i + 4).toInt(16).toChar())
                                i += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Double {
            val start = i
            if (s[i] == '-') i++
            while (i < s.length && (s[i] in '0'..'9' || s[i] == '.' || s[i] == 'e' || s[i] == 'E' ||
                        s[i] == '+' || s[i] == '-')) i++
            return s.substring(start, i).toDoubleOrNull() ?: fail("bad number '${s.substring(start, i)}'")
        }
    }
}

/** Typed access to a parsed JSON object with errors that name the missing key. */
class JsonObj(val map: Map<String, Any?>, private val where: String = "manifest") {
    fun has(key: String) = map.containsKey(key) && map[key] != null

    fun obj(key: String): JsonObj {
        @Suppress("UNCHECKED_CAST")
        val m = map[key] as? Map<String, Any?> ?: throw IllegalArgumentException("$where: '$key' must be an object")
        return JsonObj(m, "$where.$key")
    }

    fun arr(key: String): List<Any?> =
        map[key] as? List<Any?> ?: throw IllegalArgumentException("$where: '$key' must be an array")

    fun objects(key: String): List<JsonObj> = arr(key).mapIndexed { n, v ->
        @Suppress("UNCHECKED_CAST")
        JsonObj(v as? Map<String, Any?> ?: throw IllegalArgumentException("$where.$key[$n] must be an object"),
            "$where.$key[$n]")
    }

    fun str(key: String): String =
        map[key] as? String ?: throw IllegalArgumentException("$where: '$key' must be a string")

    fun strOrNull(key: String): String? = map[key] as? String

    fun num(key: String): Double =
        (map[key] as? Double) ?: throw IllegalArgumentException("$where: '$key' must be a number")

    fun numOrNull(key: String): Double? = map[key] as? Double

    fun int(key: String): Int = num(key).toInt()

    fun bool(key: String): Boolean =
        map[key] as? Boolean ?: throw IllegalArgumentException("$where: '$key' must be true or false")

    fun ints(key: String): IntArray = arr(key).map { (it as Double).toInt() }.toIntArray()

    fun floats(key: String): FloatArray = arr(key).map { (it as Double).toFloat() }.toFloatArray()

    fun doubles(key: String): DoubleArray = arr(key).map { it as Double }.toDoubleArray()

    fun strings(key: String): List<String> = arr(key).map { it as String }

    companion object {
        fun parse(text: String, where: String = "manifest"): JsonObj {
            @Suppress("UNCHECKED_CAST")
            val m = Json.parse(text) as? Map<String, Any?> ?: throw IllegalArgumentException("$where: not a JSON object")
            return JsonObj(m, where)
        }
    }
}
