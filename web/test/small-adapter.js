// Init script of the "small adapter" page: the WebGPU adapter reports (and the device then
// enforces) a 4 KiB storage-binding limit, as a weak GPU too small for the model would.
Object.defineProperty(GPUSupportedLimits.prototype, "maxStorageBufferBindingSize", { get: () => 4096, configurable: true });
