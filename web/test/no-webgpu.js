// Init script of the "no WebGPU" page: this browser then exposes no navigator.gpu, as
// browsers without WebGPU do.
Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined, configurable: true });
if (typeof WorkerNavigator !== "undefined") Object.defineProperty(WorkerNavigator.prototype, "gpu", { get: () => undefined, configurable: true });
