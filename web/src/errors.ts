/**
 * Typed errors. Every error the package throws is a `WebggufError` with a stable `code`; each
 * code has its own class so callers can `instanceof` or switch on `code`. The codes come from
 * the Rust runtime (`runtime/src/web/`) or from this package.
 */
export type ErrorCode =
  | "no_webgpu" // WebGPU missing or refused a device (device: "webgpu")
  | "model_too_large" // a tensor or the KV cache exceeds the adapter's limits
  | "device_lost" // the GPU device was lost and could not be recovered
  | "gpu" // another WebGPU failure
  | "network" // the connection failed and retries ran out
  | "http" // the server answered an error status (404, 403…)
  | "integrity" // bytes differ from the manifest's sha256
  | "length" // a shard is shorter or longer than announced
  | "malformed" // not a GGUF file, or a corrupt one
  | "shards" | "manifest" // shards missing, extra or out of order; a bad manifest
  | "quota" // the model could not be cached and requireCache was set
  | "cache" // browser storage failed
  | "aborted" // an AbortSignal fired or interrupt() was called during loading
  | "context_length" // prompt plus completion exceed the context
  | "options" // a bad option or request field
  | "template" // the chat template failed
  | "tokenizer" | "model" // the model file's tokenizer or tensors are unusable
  | "unloaded" // the engine was unloaded
  | "busy" | "state" | "internal" | "worker";

export class WebggufError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

export class NoWebGPUError extends WebggufError {}
export class ModelTooLargeError extends WebggufError {}
export class DeviceLostError extends WebggufError {}
export class GpuError extends WebggufError {}
export class NetworkError extends WebggufError {}
export class HttpError extends WebggufError {}
export class IntegrityError extends WebggufError {}
export class ModelFormatError extends WebggufError {}
export class QuotaError extends WebggufError {}
export class CacheError extends WebggufError {}
export class AbortError extends WebggufError {}
export class ContextLengthError extends WebggufError {}
export class InvalidRequestError extends WebggufError {}
export class TemplateError extends WebggufError {}
export class UnloadedError extends WebggufError {}

const classes: Partial<Record<ErrorCode, new (code: ErrorCode, message: string) => WebggufError>> = {
  no_webgpu: NoWebGPUError,
  model_too_large: ModelTooLargeError,
  device_lost: DeviceLostError,
  gpu: GpuError,
  network: NetworkError,
  http: HttpError,
  integrity: IntegrityError,
  length: ModelFormatError,
  malformed: ModelFormatError,
  shards: ModelFormatError,
  manifest: ModelFormatError,
  tokenizer: ModelFormatError,
  model: ModelFormatError,
  quota: QuotaError,
  cache: CacheError,
  aborted: AbortError,
  context_length: ContextLengthError,
  options: InvalidRequestError,
  template: TemplateError,
  unloaded: UnloadedError,
};

/** The error class for `code` with `message`. */
export function errorFromCode(code: string, message: string): WebggufError {
  const c = (code in classes ? code : "internal") as ErrorCode;
  const Cls = classes[c] ?? WebggufError;
  return new Cls(c, message);
}

/** Any thrown value (a runtime Error with `code`, a DOMException, a string) as a WebggufError. */
export function toWebggufError(e: unknown): WebggufError {
  if (e instanceof WebggufError) return e;
  if (e && typeof e === "object") {
    const o = e as { code?: unknown; message?: unknown; name?: unknown };
    if (typeof o.code === "string") return errorFromCode(o.code, String(o.message ?? o.code));
    if (o.name === "AbortError") return new AbortError("aborted", String(o.message ?? "aborted"));
    if (typeof o.message === "string") return new WebggufError("internal", o.message);
  }
  return new WebggufError("internal", String(e));
}

/** A plain object for postMessage; `errorFromCode` rebuilds the class on the other side. */
export function serializeError(e: unknown): { code: string; message: string } {
  const w = toWebggufError(e);
  return { code: w.code, message: w.message };
}
