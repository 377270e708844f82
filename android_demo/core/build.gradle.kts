// The app-independent core: manifest parsing, preprocessing, the state loop, top-k. Plain Kotlin (no Android),
// so it is unit-tested on the JVM. Golden replay tests read bundles from -Pstexport.bundles=dir1:dir2.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("stexport.bundles", (project.findProperty("stexport.bundles") as String?) ?: "")
}
