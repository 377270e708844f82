package org.stexport.demo

import android.Manifest
import android.content.pm.PackageManager
import android.os.Bundle
import android.util.Log
import android.widget.Button
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import org.stexport.demo.core.DemoBundle
import org.stexport.demo.core.DemoPipeline
import org.stexport.demo.core.Prediction
import java.io.File
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Camera -> model -> top-5. CameraX delivers YUV frames to one analysis thread; the core turns each into the
 * model input (manifest preprocessing), runs the shared state loop on LiteRT and smooths the scores; the UI
 * shows the top-5 labels and the time per frame. Reset clears every state (back to "frame 0").
 */
class MainActivity : AppCompatActivity() {
    private lateinit var preview: PreviewView
    private lateinit var modelText: TextView
    private lateinit var top5Text: TextView
    private lateinit var timingText: TextView

    private val analysisThread: ExecutorService = Executors.newSingleThreadExecutor()
    private val frames = CameraFrames()
    private var runtime: LiteRtRuntime? = null
    private var pipeline: DemoPipeline? = null

    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) {
            startCamera()
        } else {
            top5Text.text = getString(R.string.camera_denied)
        }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        preview = findViewById(R.id.preview)
        modelText = findViewById(R.id.model)
        top5Text = findViewById(R.id.top5)
        timingText = findViewById(R.id.timing)
        findViewById<Button>(R.id.reset).setOnClickListener {
            // on the analysis thread, so a reset never lands in the middle of a step
            analysisThread.execute { pipeline?.reset() }
            top5Text.text = ""
            timingText.text = ""
        }

        val dir = bundleDir()
        if (dir == null) {
            modelText.text = getString(R.string.no_bundle, File(getExternalFilesDir(null), "bundle").path)
            return
        }
        try {
            val bundle = DemoBundle.load(dir)
            val rt = LiteRtRuntime(bundle.artifact, bundle.manifest)
            runtime = rt
            pipeline = DemoPipeline(bundle.manifest, rt, bundle.labels)
            val m = bundle.manifest
            val form = if (m.states.isEmpty()) m.form.name.lowercase() else "${m.states.size} states"
            modelText.text = String.format(Locale.US, "%s  (%s, %dx%d, %s)", m.name, m.target,
                m.preprocessing.height, m.preprocessing.width, form)
        } catch (e: Exception) {
            Log.e(TAG, "cannot load the bundle in $dir", e)
            modelText.text = "Cannot load the bundle in $dir:\n${e.message}"
            return
        }

        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            askCamera.launch(Manifest.permission.CAMERA)
        }
    }

    /** A bundle pushed to the app's external files dir wins; otherwise one built into assets/bundle/. */
    private fun bundleDir(): File? {
        val external = getExternalFilesDir(null)?.let { File(it, "bundle") }
        if (external != null && File(external, "manifest.json").isFile) return external
        val names = assets.list("bundle")?.toList().orEmpty()
        if ("manifest.json" !in names) return null
        val local = File(filesDir, "bundle")
        local.mkdirs()
        for (name in names) {
            assets.open("bundle/$name").use { src -> File(local, name).outputStream().use { src.copyTo(it) } }
        }
        return local
    }

    private fun startCamera() {
        val providerFuture = ProcessCameraProvider.getInstance(this)
        providerFuture.addListener({
            val provider = providerFuture.get()
            val previewUseCase = Preview.Builder().build().also { it.setSurfaceProvider(preview.surfaceProvider) }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_YUV_420_888)
                .build()
            analysis.setAnalyzer(analysisThread) { image -> analyze(image) }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, previewUseCase, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun analyze(image: ImageProxy) {
        image.use {
            val p = pipeline ?: return
            val result = try {
                p.onCameraFrame(frames.planes(it), it.imageInfo.rotationDegrees)
            } catch (e: Exception) {
                Log.e(TAG, "inference failed", e)
                null
            }
            if (result != null) runOnUiThread { show(result) }
        }
    }

    private fun show(r: Prediction) {
        top5Text.text = r.top.joinToString("\n") {
            String.format(Locale.US, "%5.1f%%  %s", 100f * it.score, it.label)
        }
        timingText.text = String.format(Locale.US, "%.1f ms / frame (mean %.1f)   frame %d", r.millis, r.meanMillis,
            r.step + 1)
    }

    override fun onDestroy() {
        super.onDestroy()
        analysisThread.execute { runtime?.close() }
        analysisThread.shutdown()
    }

    private companion object {
        const val TAG = "stexport-demo"
    }
}
