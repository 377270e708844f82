import AVFoundation
import CoreVideo
import Foundation

/// The back camera as upright BGRA frames, delivered one at a time on a serial queue (late frames are dropped
/// while the model is busy, so the stream never falls behind the camera).
final class CameraSource: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate {
    let session = AVCaptureSession()
    private let queue = DispatchQueue(label: "stexport.camera")
    private let output = AVCaptureVideoDataOutput()
    /// Called on the camera queue with the BGRA pixel buffer of each frame.
    var onFrame: ((CVPixelBuffer) -> Void)?

    func configure() throws {
        session.beginConfiguration()
        defer { session.commitConfiguration() }
        session.sessionPreset = .hd1280x720
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back) else {
            throw CameraError.noCamera
        }
        let input = try AVCaptureDeviceInput(device: device)
        guard session.canAddInput(input) else { throw CameraError.cannotAdd }
        session.addInput(input)
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: kCVPixelFormatType_32BGRA]
        output.alwaysDiscardsLateVideoFrames = true
        output.setSampleBufferDelegate(self, queue: queue)
        guard session.canAddOutput(output) else { throw CameraError.cannotAdd }
        session.addOutput(output)
        if let connection = output.connection(with: .video) {
            if #available(iOS 17.0, *) {
                if connection.isVideoRotationAngleSupported(90) { connection.videoRotationAngle = 90 }
            } else if connection.isVideoOrientationSupported {
                connection.videoOrientation = .portrait
            }
        }
    }

    func start() { queue.async { self.session.startRunning() } }

    func stop() { queue.async { self.session.stopRunning() } }

    /// Run `work` on the camera queue (between frames), e.g. a state reset.
    func perform(_ work: @escaping () -> Void) { queue.async(execute: work) }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer,
                       from connection: AVCaptureConnection) {
        guard let pixels = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        onFrame?(pixels)
    }

    enum CameraError: Error {
        case noCamera
        case cannotAdd
    }
}
