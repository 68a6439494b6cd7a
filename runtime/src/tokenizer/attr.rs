//! Token attributes, llama.cpp's `llama_token_attr` bit set, and the GGUF token types they
//! come from (`tokenizer.ggml.token_type`, `llama_token_type`).

pub const UNDEFINED: u16 = 0;
pub const UNKNOWN: u16 = 1 << 0;
pub const UNUSED: u16 = 1 << 1;
pub const NORMAL: u16 = 1 << 2;
pub const CONTROL: u16 = 1 << 3;
pub const USER_DEFINED: u16 = 1 << 4;
pub const BYTE: u16 = 1 << 5;
pub const NORMALIZED: u16 = 1 << 6;
pub const LSTRIP: u16 = 1 << 7;
pub const RSTRIP: u16 = 1 << 8;
pub const SINGLE_WORD: u16 = 1 << 9;

/// GGUF token types (`llama_token_type`).
pub const TYPE_UNDEFINED: i32 = 0;
pub const TYPE_NORMAL: i32 = 1;
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_UNUSED: i32 = 5;
pub const TYPE_BYTE: i32 = 6;

/// The attributes of one token (a set of the bits above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenAttr(pub u16);

impl TokenAttr {
    /// Whether any of `bits` is set.
    pub fn has(self, bits: u16) -> bool {
        self.0 & bits != 0
    }
    pub fn is_control(self) -> bool {
        self.has(CONTROL)
    }
    pub fn is_user_defined(self) -> bool {
        self.has(USER_DEFINED)
    }
    pub fn is_byte(self) -> bool {
        self.has(BYTE)
    }
    pub fn is_unknown(self) -> bool {
        self.has(UNKNOWN)
    }
    pub fn is_unused(self) -> bool {
        self.has(UNUSED)
    }
    pub fn is_normal(self) -> bool {
        self.has(NORMAL)
    }
}

/// Attribute of a GGUF token type; unknown types are UNDEFINED, as in llama.cpp.
pub(crate) fn from_token_type(t: i32) -> u16 {
    match t {
        TYPE_UNKNOWN => UNKNOWN,
        TYPE_UNUSED => UNUSED,
        TYPE_NORMAL => NORMAL,
        TYPE_CONTROL => CONTROL,
        TYPE_USER_DEFINED => USER_DEFINED,
        TYPE_BYTE => BYTE,
        _ => UNDEFINED,
    }
}
