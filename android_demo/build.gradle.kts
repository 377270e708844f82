// Top-level build file: plugin versions only; see app/ (the Android app) and core/ (plain Kotlin, JVM-tested).
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.0.21" apply false
    id("org.jetbrains.kotlin.jvm") version "2.0.21" apply false
}
