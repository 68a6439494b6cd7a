/** Public types of the `webgguf` package (OpenAI-shaped where OpenAI has the concept). */

/** A model: one GGUF URL (a split's first shard, `…-00001-of-0000N.gguf`, loads every shard),
 * the shard URLs in order, or a `manifest.json` written by `webgguf shard`. */
export type ModelSource = string | string[] | { manifest: string };

export type DeviceKind = "auto" | "webgpu" | "cpu";

/**
 * "error": a prompt that leaves no room for the answer's first token fails with
 * ContextLengthError before any work; an answer that fills the context ends with
 * finish_reason "length". "truncate-middle": a chat that leaves less than the answer's room
 * (max_tokens, else a quarter of the context; at most half) drops its oldest turns after the
 * leading system messages and the first user turn, as llama.cpp's n_keep does, until half that
 * room is free; the next requests start from the same cut, so they reuse the cache. */
export type ContextOverflow = "error" | "truncate-middle";
export type KvCacheType = "f32" | "f16" | "q8" | "q4";

/** Loading progress (from the streaming loader). */
export interface LoadProgress {
  /** "shard" when a shard begins; while its bytes arrive (at most every 100 ms, and once at the
   * shard's end) "download" (from the network) or "cache" (from the cache store); "ready" once,
   * at the end (with `report`). */
  phase: "shard" | "download" | "cache" | "ready";
  shard: number;
  shards: number;
  url?: string;
  /** Bytes loaded so far (all shards) and the total when known. */
  loaded: number;
  total: number | null;
  from_cache: number;
  from_network: number;
  rate_bytes_per_s?: number | null;
  eta_s?: number | null;
  report?: LoadReport | null;
}

export interface LoadReport {
  bytes: number;
  from_cache: number;
  from_network: number;
  discarded: number;
  resumes: number;
  cached_now: number;
  cache_note: string | null;
  ms_total: number;
  ms_network: number;
  ms_cache: number;
  ms_upload: number;
}

export interface EngineOptions {
  model: ModelSource;
  /** "auto" (default): WebGPU when the browser has it and the model fits the adapter, else the
   * SIMD128 CPU path (`engine.device.fallback` says why). The model is planned from its first
   * shard's header first (see `planModel`): one that cannot run fails before its weights are
   * fetched, and it is streamed once, to the planned device. */
  device?: DeviceKind;
  /** KV-cache storage (default: "f16", or a smaller type the plan picks when f16 does not fit). */
  kvCache?: KvCacheType;
  /** For "q8" / "q4": positions before and including each query's own whose K and V rows are
   * read from f16 copies kept beside the quantized ones, with the sequence's first 4 (default
   * 64; 0 for none). */
  kvRecent?: number;
  /** WebGPU kernel family: "exact" (activations rounded as llama.cpp's dot products round them:
   * the CPU path's numbers up to summation order) or "fast" (activations unrounded: fewer
   * dispatches, closer to the unquantized model). Default: "fast", or "exact" on a fallback
   * (software) adapter such as SwiftShader. */
  gpuKernels?: "exact" | "fast";
  /** Positions the KV cache holds (default: 4096, or less when the plan must; capped at the
   * model's trained context). */
  contextLength?: number;
  /** Keep the cached positions a request's prompt shares with the previous generation (the
   * conversation so far) and prefill only the rest (default true). */
  reusePrefix?: boolean;
  /** What a chat longer than the context does (default "error"; a request may override it):
   * see ContextOverflow. */
  contextOverflow?: ContextOverflow;
  /** Cache the shards in browser storage (default true). */
  cache?: boolean;
  /** Fail with QuotaError instead of loading uncached when storage is full. */
  requireCache?: boolean;
  /** "cache-storage" (default) or "opfs" (Origin Private File System). */
  store?: "cache-storage" | "opfs";
  /** Do not cache models larger than this. */
  maxCacheBytes?: number;
  /** Cancels loading. */
  signal?: AbortSignal;
  maxAttempts?: number;
  retryDelayMs?: number;
  stallTimeoutMs?: number;
  onProgress?: (p: LoadProgress) => void;
  /** Called after the engine recovered from a lost GPU device (or failed to). */
  onDeviceLost?: (e: DeviceLossEvent) => void;
  /** Where `webgguf_bg.wasm` is served from, for bundlers that do not rewrite
   * `new URL(…, import.meta.url)` (default: next to the package's JS). */
  wasmUrl?: string | URL;
}

export interface WorkerEngineOptions extends Omit<EngineOptions, "signal" | "wasmUrl"> {
  signal?: AbortSignal;
  /** As in EngineOptions, resolved inside the worker. */
  wasmUrl?: string;
}

export interface AdapterInfo {
  adapter: string;
  backend: string;
  device_type: string;
  shader_f16: boolean;
  subgroups: boolean;
  max_storage_buffer_binding_size: number;
  max_buffer_size: number;
  max_compute_workgroup_storage_size: number;
  max_compute_workgroups_per_dimension: number;
  min_uniform_buffer_offset_alignment: number;
}

export interface DeviceInfo {
  /** Where the model runs. */
  device: "webgpu" | "cpu";
  /** The WebGPU adapter and its features (null on the CPU). */
  adapter: AdapterInfo | null;
  /** The CPU kernel family: "simd128" or "scalar". */
  kernels: string;
  /** The WebGPU kernel family (null on the CPU). */
  gpuKernels: "exact" | "fast" | null;
  /** Why device "auto" runs on the CPU (no WebGPU, model too large for the adapter…). */
  fallback: string | null;
}

export interface DeviceLossEvent {
  message: string;
  /** The device after recovery (may be the CPU), or null when recovery failed. */
  recoveredOn: "webgpu" | "cpu" | null;
  recoveryMs: number;
  /** Tokens replayed to rebuild the conversation. */
  replayedTokens: number;
}

export interface EngineStats {
  /** "cpu", or the GPU adapter and its features. */
  device: string;
  /** Prompt tokens prefilled, and taken from the cache (the previous generation's prefix). */
  prompt_tokens: number;
  reused_tokens: number;
  generated_tokens: number;
  ttft_ms: number;
  prefill_ms: number;
  prefill_tok_s: number;
  decode_ms: number;
  decode_tok_s: number;
  itl_p50_ms: number;
  itl_p95_ms: number;
  peak_kv_bytes: number;
  kv_capacity_bytes: number;
  /** Size of the wasm instance's memory. */
  wasmMemoryBytes: number;
  /** Bytes of the model file(s). */
  modelBytes: number | null;
  /** Device losses recovered from (or not) since loading. */
  deviceLosses: DeviceLossEvent[];
  info: DeviceInfo;
}

export type Role = "system" | "user" | "assistant" | "tool" | "developer";

export interface ChatMessage {
  role: Role | string;
  /** Text, or OpenAI content parts of which the text parts are used (null: an assistant's
   * message that only calls tools). */
  content: string | Array<{ type: "text"; text: string } | { type: string; [k: string]: unknown }> | null;
  name?: string;
  /** An assistant's tool calls (as a response returned them). */
  tool_calls?: ChatCompletionMessageToolCall[];
  /** A `role: "tool"` message: the call it answers. */
  tool_call_id?: string;
}

/** A tool the model may call (OpenAI's function tool). */
export interface ChatCompletionTool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface ChatCompletionMessageToolCall {
  id: string;
  type: "function";
  /** `arguments`: JSON text, as the model wrote it. */
  function: { name: string; arguments: string };
}

/** Sampling and stopping, as OpenAI names them (plus llama.cpp's top_k, min_p and
 * repetition_penalty). Unset fields take llama.cpp's defaults (temperature 0.8, top_k 40,
 * top_p 0.95, min_p 0.05); `temperature: 0` is greedy. */
export interface SamplingParams {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  repetition_penalty?: number;
  /** Token id → bias added to its logit (-100 or less bans it, as in OpenAI). */
  logit_bias?: Record<string, number>;
  seed?: number;
  stop?: string | string[] | null;
  max_tokens?: number | null;
  /** OpenAI's newer name for max_tokens. */
  max_completion_tokens?: number | null;
}

/** One token's log-probability (OpenAI's `logprobs.content` entry). */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

/** OpenAI's legacy completions `logprobs`. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Array<Record<string, number>>;
  text_offset: number[];
}

/** OpenAI's `response_format`: plain text, any JSON object, or JSON that follows a schema
 * (`json_schema.schema`; the answer is held to it token by token: constrained decoding). */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name?: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

/** Constrained decoding, on both create calls: `response_format`, llama.cpp's `json_schema`,
 * or a GBNF `grammar` (llama.cpp's format; `root` is the start rule). One at most. */
export interface ConstraintParams {
  response_format?: ResponseFormat | null;
  json_schema?: Record<string, unknown> | null;
  grammar?: string | null;
}

export interface ChatCompletionCreateParams extends SamplingParams, ConstraintParams {
  messages: ChatMessage[];
  model?: string;
  stream?: boolean | null;
  /** Return each generated token's log-probability (the model's own distribution). */
  logprobs?: boolean | null;
  /** With logprobs: the most likely alternatives per token (0–20). */
  top_logprobs?: number | null;
  /** Tools the model may call: passed to the chat template (or described in the system
   * message when the template does not render tools); calls in the answer come back as
   * `tool_calls` with finish_reason "tool_calls". */
  tools?: ChatCompletionTool[];
  /** "auto" (default), "none" (the tools are shown, the answer is not parsed for calls),
   * "required" (the answer is held to one call of the tools) or a named function (one call of
   * that function). */
  tool_choice?: "auto" | "none" | "required" | { type: "function"; function: { name: string } };
  /** Overrides the engine's contextOverflow for this request. */
  context_overflow?: ContextOverflow;
  /** Only 1 is supported. */
  n?: number | null;
  /** Also accepted as the second argument's `{ signal }`, as in the OpenAI SDK. */
  signal?: AbortSignal;
}

export interface CompletionCreateParams extends SamplingParams, ConstraintParams {
  prompt: string;
  model?: string;
  stream?: boolean | null;
  /** Log-probabilities with this many alternatives per token (0–5, as OpenAI). */
  logprobs?: number | null;
  /** Only 1 is supported. */
  n?: number | null;
  signal?: AbortSignal;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

/** "abort": interrupted by interrupt() or an AbortSignal; "tool_calls": the answer called tools. */
export type FinishReason = "stop" | "length" | "abort" | "tool_calls";

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** `cached_tokens`: prompt tokens taken from the cache rather than prefilled. */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: "assistant"; content: string | null; tool_calls?: ChatCompletionMessageToolCall[] };
    finish_reason: FinishReason;
    logprobs: { content: TokenLogprob[] } | null;
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: "assistant"; content?: string; tool_calls?: Array<ChatCompletionMessageToolCall & { index: number }> };
    finish_reason: FinishReason | null;
    logprobs: { content: TokenLogprob[] } | null;
  }>;
  /** On the last chunk. */
  usage?: CompletionUsage;
}

export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: FinishReason; logprobs: CompletionLogprobs | null }>;
  usage: CompletionUsage;
}

export interface CompletionChunk {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: FinishReason | null; logprobs: CompletionLogprobs | null }>;
  usage?: CompletionUsage;
}

/** A streamed response: iterate it with `for await`; `controller.abort()` stops it. */
export interface Stream<T> extends AsyncIterable<T> {
  controller: AbortController;
}

/** What `planModel` is given: the device, KV and context options of EngineOptions, and the
 * fetch options used to read the header. */
export type PlanOptions = Pick<EngineOptions, "device" | "kvCache" | "kvRecent" | "contextLength" | "cache" | "store" | "signal" | "maxAttempts" | "retryDelayMs" | "stallTimeoutMs" | "wasmUrl">;

/** The planner's decision for a model, from its first shard's header and the adapter's limits
 * (or wasm32's 4 GiB on the CPU path). Sizes in bytes; split models' other shards are
 * estimated (`estimatedTensors`). */
export interface ModelPlan {
  device: "webgpu" | "cpu";
  kv: KvCacheType;
  contextLength: number;
  kvRecent: number;
  arch: string;
  shards: number;
  bytes: {
    /** The weights as stored, and in the GPU's layout (null when the GPU was not considered). */
    weights: number;
    gpuWeights: number | null;
    kv: number;
    kvLayer: number | null;
    working: number;
    /** Weights + KV + working memory on `device`, and what that was checked against. */
    total: number;
    limit: number | null;
  };
  tensors: number;
  estimatedTensors: number;
  /** Why, one line per decision. */
  reasons: string[];
  /** The WebGPU adapter whose limits were used (null: no GPU considered). */
  adapter: string | null;
  /** Network bytes read for the header (0 when it came from the cache). */
  headerBytes: number;
  headerFromCache: boolean;
}

export interface CachedModel {
  model: string;
  shards: number;
  bytes: number;
  urls: string[];
}

export interface Engine {
  chat: {
    completions: {
      create(body: ChatCompletionCreateParams & { stream: true }, options?: RequestOptions): Promise<Stream<ChatCompletionChunk>>;
      create(body: ChatCompletionCreateParams & { stream?: false | null }, options?: RequestOptions): Promise<ChatCompletion>;
      create(body: ChatCompletionCreateParams, options?: RequestOptions): Promise<ChatCompletion | Stream<ChatCompletionChunk>>;
    };
  };
  completions: {
    create(body: CompletionCreateParams & { stream: true }, options?: RequestOptions): Promise<Stream<CompletionChunk>>;
    create(body: CompletionCreateParams & { stream?: false | null }, options?: RequestOptions): Promise<Completion>;
    create(body: CompletionCreateParams, options?: RequestOptions): Promise<Completion | Stream<CompletionChunk>>;
  };
  /** Where the model runs (WebGPU adapter or CPU, and why "auto" fell back). */
  readonly device: DeviceInfo;
  /** The model's name (its URL or manifest). */
  readonly model: string;
  tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): Promise<number[]>;
  detokenize(ids: number[]): Promise<string>;
  /** Renders messages with the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt?: boolean, tools?: ChatCompletionTool[]): Promise<string>;
  stats(): Promise<EngineStats>;
  /** Ends the generation in progress (finish_reason "abort"). */
  interrupt(): void;
  /** Frees the model (GPU buffers, wasm memory); later calls fail with UnloadedError. */
  unload(): Promise<void>;
  /** Destroys the WebGPU device as a GPU reset would (tests of recovery). */
  loseDeviceForTesting(): Promise<void>;
}
