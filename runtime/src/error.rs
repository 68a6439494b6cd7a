//! Errors, one enum per layer. Every validation rule has its own variant carrying the
//! offending numbers, so tests can assert exactly which rule fired and users see why.

use crate::quant::GgmlType;
use thiserror::Error;

/// Errors of the scalar quantization layer (`quant/`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    #[error("{what} for {ty}: expected {expected} bytes, got {got}")]
    BufferSize { what: &'static str, ty: GgmlType, expected: usize, got: usize },
    #[error("{op} is not supported for tensor type {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },
}

/// Errors of the GGUF reader (`gguf/`): one variant per validation rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GgufError {
    // --- framing ---
    #[error("not a GGUF file: magic bytes {found:02x?} (hex), expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("big-endian GGUF (version field reads {version_le:#x} little-endian) is not supported")]
    BigEndian { version_le: u32 },
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("file ends at byte {file_size} but {what} needs bytes up to {needed}")]
    Truncated { what: &'static str, needed: u64, file_size: u64 },
    #[error("header needs at least {needed} bytes, over the limit of {limit}")]
    HeaderTooLarge { needed: u64, limit: u64 },
    #[error("{n_tensors} tensors and {n_kv} metadata entries need at least {min_bytes} bytes, the file has {file_size}")]
    CountsExceedFile { n_tensors: u64, n_kv: u64, min_bytes: u64, file_size: u64 },
    #[error("tensor count {count} exceeds the limit of {limit}")]
    TooManyTensors { count: u64, limit: u64 },
    #[error("metadata entry count {count} exceeds the limit of {limit}")]
    TooManyKv { count: u64, limit: u64 },

    // --- metadata values ---
    #[error("string of {len} bytes at offset {offset} exceeds the limit of {limit}")]
    StringTooLong { len: u64, limit: u64, offset: u64 },
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("array of {len} elements at offset {offset} exceeds the limit of {limit}")]
    ArrayTooLong { len: u64, limit: u64, offset: u64 },
    #[error("arrays nested {depth} deep at offset {offset}, over the limit of {limit}")]
    ArrayTooDeep { depth: u32, limit: u32, offset: u64 },
    #[error("unknown metadata value type {type_id} at offset {offset}")]
    UnknownValueType { type_id: u32, offset: u64 },
    #[error("array at offset {offset} has unknown element type {type_id}")]
    UnknownArrayType { type_id: u32, offset: u64 },
    #[error("bool at offset {offset} is {byte}, expected 0 or 1")]
    InvalidBool { byte: u8, offset: u64 },
    #[error("metadata entry {index} has an empty key")]
    EmptyKey { index: u64 },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },

    // --- alignment ---
    #[error("general.alignment has type {found}, expected u32")]
    AlignmentWrongType { found: &'static str },
    #[error("general.alignment is 0")]
    AlignmentZero,
    #[error("general.alignment {alignment} is not a power of two")]
    AlignmentNotPowerOfTwo { alignment: u64 },
    #[error("general.alignment {alignment} exceeds the limit of {limit}")]
    AlignmentTooLarge { alignment: u64, limit: u64 },

    // --- tensor infos ---
    #[error("tensor {index} has an empty name")]
    EmptyTensorName { index: u64 },
    #[error("tensor {tensor:?} has {n_dims} dimensions, at most {limit} are allowed")]
    TooManyDims { tensor: String, n_dims: u32, limit: u32 },
    #[error("tensor {tensor:?} has size 0 in dimension {dim}")]
    ZeroDimension { tensor: String, dim: usize },
    #[error("tensor {tensor:?} has negative size {value} in dimension {dim}")]
    NegativeDimension { tensor: String, dim: usize, value: i64 },
    #[error("tensor {tensor:?}: element count of shape {shape:?} overflows")]
    ElementCountOverflow { tensor: String, shape: Vec<u64> },
    #[error("tensor {tensor:?}: byte size of {n_elements} elements of {ty} overflows")]
    ByteSizeOverflow { tensor: String, n_elements: u64, ty: GgmlType },
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: row of {row} elements is not a multiple of {ty}'s block size {block}")]
    RowNotBlockMultiple { tensor: String, ty: GgmlType, row: u64, block: usize },
    #[error("tensor {tensor:?} at data offset {offset} is not aligned to {alignment}")]
    MisalignedOffset { tensor: String, offset: u64, alignment: u64 },
    #[error("tensors {first:?} (bytes {first_start}..{first_end}) and {second:?} (from {second_start}) overlap")]
    OverlappingTensors { first: String, first_start: u64, first_end: u64, second: String, second_start: u64 },
    #[error("tensor {tensor:?} ends at data byte {end}, past the {data_size} bytes of tensor data")]
    TensorPastEnd { tensor: String, end: u64, data_size: u64 },
    #[error("tensor name {name:?} appears twice{}", shard.map(|s| format!(" (again in shard {s})")).unwrap_or_default())]
    DuplicateTensor { name: String, shard: Option<u32> },
    #[error("tensor data totals {bytes} bytes, over the limit of {limit}")]
    TotalBytesTooLarge { bytes: u64, limit: u64 },

    // --- split GGUF ---
    #[error("split key {key} has type {found}, expected {expected}")]
    SplitWrongType { key: &'static str, expected: &'static str, found: &'static str },
    #[error("split metadata incomplete: {key} is missing")]
    SplitKeyMissing { key: &'static str },
    #[error("split.count is 0")]
    SplitCountZero,
    #[error("split.no {no} is not below split.count {count}")]
    SplitIndexOutOfRange { no: u64, count: u64 },
    #[error("shard {shard} says split.count {found}, shard 0 says {expected}")]
    SplitCountMismatch { shard: u64, expected: u64, found: u64 },
    #[error("shard {shard} says split.tensors.count {found}, shard 0 says {expected}")]
    SplitTensorTotalMismatch { shard: u64, expected: i64, found: i64 },
    #[error("shards hold {found} tensors in all, split.tensors.count says {expected}")]
    SplitTensorCountMismatch { expected: i64, found: u64 },
    #[error("shard {shard} holds {count} tensors, more than split.tensors.count {total}")]
    SplitShardTooManyTensors { shard: u64, count: u64, total: i64 },
    #[error("shard {no} of {count} is missing")]
    MissingShard { no: u64, count: u64 },
    #[error("shard {no} was given twice")]
    DuplicateShard { no: u64 },

    // --- typed metadata access ---
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("metadata key {key:?}: value {value} is out of range for {expected}")]
    OutOfRange { key: String, value: String, expected: &'static str },
}

/// Errors of model construction and the forward pass (`model/`).
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("unsupported architecture {0:?} (supported: llama, qwen2, qwen3, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("unsupported rope scaling {0:?} (supported: none, linear)")]
    UnsupportedRopeScaling(String),
    #[error("bad hyperparameter {what}: {value}")]
    BadHyperparameter { what: String, value: String },
    #[error("tensor {0:?} is missing from the model")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {name:?} has type {ty}, which this backend cannot compute with")]
    UnsupportedTensorType { name: String, ty: GgmlType },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("position {pos} is beyond the context length {n_ctx}")]
    ContextFull { pos: usize, n_ctx: usize },
    #[error("reading tensor {name:?}: {message}")]
    TensorRead { name: String, message: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Logits that cannot be sampled (NaN).
    #[error(transparent)]
    Sampler(#[from] SamplerError),
}

/// Errors of the WebGPU backend (`gpu/`). `NoAdapter` and `MissingFeature` mean "use the CPU".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GpuError {
    /// No WebGPU / Vulkan / Metal / DX12 adapter is available.
    #[error("no GPU adapter available: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("the GPU adapter refused a device: {0}")]
    RequestDevice(String),
    /// A buffer (a tensor chunk, the KV cache of a layer, attention scores) exceeds what the
    /// device can bind or allocate.
    #[error("{what} needs {bytes} bytes, over the device's limit of {limit}")]
    TooLarge { what: String, bytes: u64, limit: u64 },
    /// A shape the GPU kernels cannot take (they read 4 values at a time, KV rows in groups of 32).
    #[error("unsupported shape for the GPU kernels: {0}")]
    Shape(String),
    /// The device was lost (driver reset, tab backgrounded, GPU process crash).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// wgpu reported an error (validation, out of memory) for submitted work.
    #[error("GPU error: {0}")]
    Device(String),
    /// Reading a buffer back failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    /// A blocking call on a platform that only allows asynchronous GPU reads (the browser):
    /// use the `_async` method.
    #[error("{0} must be awaited in the browser (use the async variant)")]
    NeedsAsync(&'static str),
}

/// Errors of chat templating (`chat/`): one variant per rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// The template text does not parse (Jinja syntax error, or a feature the sandbox leaves
    /// out such as `{% include %}`).
    #[error("chat template syntax error: {message}")]
    TemplateSyntax { message: String },
    /// The template called `raise_exception(message)` (HF templates do this to reject
    /// conversations, e.g. roles that do not alternate).
    #[error("chat template rejected the conversation: {message}")]
    Raised { message: String },
    /// The template used more than its fuel (instructions and bytes allocated): a runaway or
    /// hostile template.
    #[error("chat template exceeded its budget of {fuel} fuel (instructions and allocated bytes / 64)")]
    OutOfFuel { fuel: u64 },
    /// Macros or blocks nested deeper than the recursion limit.
    #[error("chat template recursed deeper than the limit of {limit}")]
    RecursionLimit { limit: usize },
    /// Any other failure while rendering (undefined value, type error, bad filter arguments…).
    #[error("chat template failed to render: {message}")]
    Render { message: String },
    /// A message has an empty role.
    #[error("message {index} has no role")]
    MissingRole { index: usize },
    /// `tokenizer.ggml.bos_token_id` / `eos_token_id` points past the vocabulary.
    #[error("{which} token id {id} is outside the vocabulary of {n_vocab} tokens")]
    SpecialTokenOutOfRange { which: &'static str, id: u32, n_vocab: usize },
    /// A metadata key the template needs has the wrong type.
    #[error("chat template metadata: {0}")]
    Metadata(#[from] GgufError),
}

/// Errors of the sampler (`sampler/`): configuration rules checked once by
/// `Sampler::new`, and per-call input checks.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SamplerError {
    #[error("temperature {value} must be a finite number >= 0")]
    Temperature { value: f32 },
    #[error("top_p {value} must be in (0, 1]")]
    TopP { value: f32 },
    #[error("min_p {value} must be in [0, 1]")]
    MinP { value: f32 },
    #[error("repetition_penalty {value} must be a finite number > 0")]
    RepetitionPenalty { value: f32 },
    #[error("presence_penalty {value} must be finite")]
    PresencePenalty { value: f32 },
    #[error("frequency_penalty {value} must be finite")]
    FrequencyPenalty { value: f32 },
    #[error("penalty_last_n {value} must be >= -1 (-1: the whole history, 0: off)")]
    PenaltyLastN { value: i32 },
    #[error("logit_bias names token {token}, outside the vocabulary of {n_vocab} tokens")]
    LogitBiasToken { token: u32, n_vocab: usize },
    #[error("logit_bias for token {token} is {bias}: must be finite or -infinity")]
    LogitBiasValue { token: u32, bias: f32 },
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("got {got} logits for a vocabulary of {expected} tokens")]
    LogitsLength { expected: usize, got: usize },
    #[error("logit of token {token} is NaN")]
    NanLogit { token: u32 },
    #[error("every token is masked (all logits are -infinity)")]
    NoCandidates,
}

/// Errors of the tokenizer (`tokenizer/`): building it from GGUF metadata (one variant per
/// validation rule) and the few things that can fail while tokenizing or detokenizing.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TokenizerError {
    /// A `tokenizer.ggml.*` key is missing or has the wrong type.
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    #[error("unknown tokenizer model {model:?} (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)")]
    UnknownModel { model: String },
    #[error("unknown BPE pre-tokenizer {pre:?} (tokenizer.ggml.pre)")]
    UnknownPreTokenizer { pre: String },
    #[error("the vocabulary (tokenizer.ggml.tokens) is empty")]
    EmptyVocabulary,
    #[error("the vocabulary has {n_vocab} tokens, over the limit of {limit}")]
    VocabularyTooLarge { n_vocab: usize, limit: usize },
    #[error("{key} has {len} entries, the vocabulary has {n_vocab} tokens")]
    ArrayLengthMismatch { key: &'static str, len: usize, n_vocab: usize },
    #[error("token {again} is {text:?}, the same text as token {first}")]
    DuplicateToken { first: u32, again: u32, text: String },
    #[error("{key} = {id} is outside the vocabulary of {n_vocab} tokens")]
    SpecialTokenOutOfRange { key: &'static str, id: u32, n_vocab: usize },
    #[error("{flag} is set but the vocabulary has no {which} token")]
    MissingSpecialToken { flag: &'static str, which: &'static str },
    #[error("token {id} has type BYTE but its text {text:?} is not <0xXX> with two hex digits")]
    MalformedByteToken { id: u32, text: String },
    #[error("byte-level BPE needs tokenizer.ggml.merges, which is missing")]
    MissingMerges,
    #[error("merge {index} ({merge:?}) is not two tokens separated by a space")]
    MalformedMerge { index: usize, merge: String },
    #[error("merge {index} ({merge:?}) names {part:?}, which is not in the vocabulary")]
    MergeUnknownToken { index: usize, merge: String, part: String },
    /// SentencePiece byte fallback: the text has a byte that neither `<0xXX>` nor the byte
    /// itself encodes in this vocabulary.
    #[error("no token encodes byte {byte:#04x} (neither <0x{byte:02X}> nor the byte itself is in the vocabulary)")]
    NoByteToken { byte: u8 },
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    TokenOutOfRange { id: u32, n_vocab: usize },
}

/// Errors of the KV cache (`kv_cache/`): one variant per validation rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache {what} is 0")]
    ZeroSize { what: &'static str },
    #[error("KV cache type {ty:?} stores groups of 32 values, but {what} is {head_dim}")]
    HeadDimNotGroupMultiple { ty: crate::kv_cache::KvType, what: &'static str, head_dim: usize },
    #[error("KV cache of {n_layers} layers × {n_ctx} positions × {n_kv_heads} heads overflows the address space")]
    SizeOverflow { n_layers: usize, n_ctx: usize, n_kv_heads: usize },
    #[error("could not allocate {bytes} bytes for the KV cache")]
    AllocFailed { bytes: usize },
    #[error("layer {layer} is out of range (the cache has {n_layers})")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    #[error("position {pos} is out of range (the cache holds {n_ctx})")]
    PositionOutOfRange { pos: usize, n_ctx: usize },
    #[error("{what} row has {got} values, expected {expected}")]
    RowLength { what: &'static str, expected: usize, got: usize },
}

/// Errors of a generation run (`engine.rs`): whichever layer failed.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
}

/// Errors of constrained decoding (`constraint/`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConstraintError {
    /// The schema or grammar does not compile (syntax, a schema feature llguidance lacks, an
    /// unsatisfiable schema).
    #[error("grammar: {0}")]
    Grammar(String),
    /// The vocabulary cannot be used for constrained decoding.
    #[error("constrained decoding: the vocabulary {0}")]
    Vocabulary(String),
    /// The matcher failed during generation (a token it had not allowed, an internal limit).
    #[error("constrained decoding failed: {0}")]
    Failed(String),
}
