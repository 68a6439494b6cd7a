//! `webgguf logits --model P --ids 1,2,3 --out FILE.npy`: teacher-forced logits, one float32 row
//! per position (`[n_ids, n_vocab]`), written as a NumPy .npy file.

use crate::common::{fail, load, ModelArgs};
use crate::with_session;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    #[arg(long)]
    out: PathBuf,
}

/// A float32 C-order .npy (format version 1.0).
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = shape.iter().map(|d| format!("{d}, ")).collect::<String>();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.trim_end_matches(' '));
    // Pad so the data starts at a multiple of 64 bytes; the header ends with '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    out
}

pub fn run(args: Args) -> ExitCode {
    let mut loaded = match load(&args.model) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let logits = match with_session!(&mut loaded.session, s => s.logits_all(&args.ids)) {
        Ok(l) => l,
        Err(e) => return fail(e, false),
    };
    let n_vocab = with_session!(&loaded.session, s => s.model.config.n_vocab);
    if let Err(e) = std::fs::write(&args.out, npy_f32(&[args.ids.len(), n_vocab], &logits)) {
        return fail(format!("{}: {e}", args.out.display()), false);
    }
    eprintln!("wrote {} × {} logits to {}", args.ids.len(), n_vocab, args.out.display());
    ExitCode::SUCCESS
}
