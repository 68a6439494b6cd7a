//! Reading a body (a fetch response, a Cache Storage entry, an OPFS file) chunk by chunk into
//! one reused buffer.
//!
//! Why not the default reader: it hands out a fresh `Uint8Array` per chunk. We copy each into
//! wasm memory at once, but the chunk's backing store is freed only when V8 next collects, and
//! a load makes little JS garbage otherwise: in Chromium 148 a whole model's worth of chunks was
//! still held when the load ended (the renderer's peak was wasm memory + the file's size). A
//! BYOB ("bring your own buffer") reader fills a buffer we give it and hands the same memory
//! back with the chunk, so a load holds [`CHUNK_BYTES`] of JS buffer however large the model.
//! A stream that is not a byte stream gets the default reader.

use super::platform::Scope;
use js_sys::{ArrayBuffer, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// Size of the reused buffer: a read returns at most this much (and whatever has arrived).
pub(crate) const CHUNK_BYTES: u32 = 1 << 20;

/// The result of one read.
pub(crate) enum Read {
    /// The next bytes. With a BYOB reader the view aliases the reused buffer: it is valid
    /// until the next read of the same reader, so copy what must outlive that.
    Chunk(Uint8Array),
    End,
    /// Nothing arrived within the stall timeout (the read is abandoned with the reader).
    Stalled,
}

enum Reader {
    /// `buffer`: [CHUNK_BYTES] bytes, handed to each read and back with its result (None while
    /// a read holds it, or after a read was abandoned: the next read allocates another).
    Byob {
        reader: web_sys::ReadableStreamByobReader,
        buffer: Option<ArrayBuffer>,
    },
    Default(web_sys::ReadableStreamDefaultReader),
}

pub(crate) struct BodyReader(Reader);

impl BodyReader {
    /// A reader of `stream`: BYOB where the stream is a byte stream, else the default reader;
    /// None when the stream cannot be read (locked).
    pub fn new(stream: &web_sys::ReadableStream) -> Option<Self> {
        if let Ok(reader) = web_sys::ReadableStreamByobReader::new(stream) {
            return Some(Self(Reader::Byob { reader, buffer: None }));
        }
        stream.get_reader().dyn_into().ok().map(|r| Self(Reader::Default(r)))
    }

    fn start(&mut self) -> js_sys::Promise {
        match &mut self.0 {
            Reader::Byob { reader, buffer } => {
                let buf = buffer.take().unwrap_or_else(|| ArrayBuffer::new(CHUNK_BYTES));
                reader.read_with_array_buffer_view(&Uint8Array::new(&buf))
            }
            Reader::Default(reader) => reader.read(),
        }
    }

    fn finish(&mut self, r: &JsValue) -> Result<Read, JsValue> {
        let value = Reflect::get(r, &"value".into())?;
        if let (Reader::Byob { buffer, .. }, Some(view)) = (&mut self.0, value.dyn_ref::<Uint8Array>()) {
            // The buffer comes back (transferred) under the view, done or not.
            *buffer = Some(view.buffer());
        }
        if Reflect::get(r, &"done".into())?.as_bool() == Some(true) {
            return Ok(Read::End);
        }
        Ok(Read::Chunk(value.unchecked_into()))
    }

    /// The next chunk (Err on a failed stream); no time limit (the cache).
    pub async fn read(&mut self) -> Result<Read, JsValue> {
        let r = JsFuture::from(self.start()).await?;
        self.finish(&r)
    }

    /// The next chunk of a network body, or `Stalled` after `ms` without one.
    pub async fn read_within(&mut self, sc: &Scope, ms: i32) -> Result<Read, JsValue> {
        let p = self.start();
        match sc.within(&p, ms).await? {
            Some(r) => self.finish(&r),
            None => Ok(Read::Stalled),
        }
    }

    /// Cancels the stream (a pending read ends); errors are of no use here.
    pub fn cancel(&self) {
        let _ = match &self.0 {
            Reader::Byob { reader, .. } => reader.cancel(),
            Reader::Default(reader) => reader.cancel(),
        };
    }
}
