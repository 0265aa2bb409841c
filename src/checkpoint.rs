//! The checkpoint format: a whole state as bytes, identical on every machine and backend.
//!
//! Layout (all integers and floats little-endian):
//! ```text
//! magic "MLORCCK\0" | format u32 = 2 | flags u32 = 0
//! algorithm, layout request, layout, rank, oversampling, power_iters,
//!   bias_correction, stochastic_rounding: 8 × u32
//! beta1, beta2, eps, weight_decay: 4 × f64 | seed u64 | step u64 | rows u64 | cols u64
//! shard begin u64 | shard end u64            (format 2; format 1 has none: the whole matrix)
//! buffer count u32 | reserved u32 = 0
//! per buffer: name length u32 | name (UTF-8) | rows u64 | cols u64 | rows·cols × f32
//! CRC-32 (IEEE) of every byte before it: u32
//! ```
//! A loader first validates every byte (checksum, fields, shapes) and only then copies, so a
//! rejected checkpoint changes nothing.
//!
//! Sharded states: FACTORED factors are the whole matrix's and the same on every rank, so a
//! FACTORED checkpoint loads into a state of any shard of the same matrix (resuming on another
//! number of ranks). DENSE moments cover the shard's elements only, so a DENSE checkpoint needs
//! the same range.

use crate::config::{Algorithm, Config, Layout, LayoutRequest, Plan, TensorDesc};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::state::State;

const MAGIC: &[u8; 8] = b"MLORCCK\0";
const FORMAT_VERSION: u32 = 2;
/// Header of format 1, the shortest.
const HEADER_BYTES_V1: usize = 8 + 4 + 4 + 8 * 4 + 4 * 8 + 4 * 8 + 4 + 4;
const HEADER_BYTES: usize = HEADER_BYTES_V1 + 2 * 8;

/// Bytes `save` writes for this state.
pub fn saved_size(state: &State) -> usize {
    HEADER_BYTES
        + state.buffer_specs().iter().map(|b| 4 + b.name.len() + 16 + 4 * b.len()).sum::<usize>()
        + 4
}

/// Writes the state into `out`, which must hold `saved_size` bytes; returns the bytes written.
pub fn save(state: &State, out: &mut [u8]) -> Result<usize> {
    let size = saved_size(state);
    if out.len() < size {
        return Err(Error::InvalidArgument(format!(
            "capacity is {} bytes, the checkpoint needs {size} (ask mlorc_state_save_size)",
            out.len()
        )));
    }
    let mut w = Writer { out, pos: 0 };
    let c = state.config();
    let plan = state.plan();
    w.bytes(MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(0);
    w.u32(algorithm_code(c.algorithm));
    w.u32(layout_request_code(c.layout));
    w.u32(layout_code(plan.layout));
    for v in [c.rank, c.oversampling, c.power_iters, c.bias_correction as u32, c.stochastic_rounding as u32] {
        w.u32(v);
    }
    for v in [c.beta1, c.beta2, c.eps, c.weight_decay] {
        w.bytes(&v.to_le_bytes());
    }
    w.u64(c.seed);
    // On CUDA this synchronises and reports a bad *lr_ptr / *grad_scale of an earlier step.
    w.u64(state.try_step_count()?);
    w.u64(plan.rows as u64);
    w.u64(plan.cols as u64);
    w.u64(plan.shard.begin as u64);
    w.u64(plan.shard.end as u64);
    let specs = state.buffer_specs();
    w.u32(specs.len() as u32);
    w.u32(0);
    for spec in &specs {
        w.u32(spec.name.len() as u32);
        w.bytes(spec.name.as_bytes());
        w.u64(spec.rows as u64);
        w.u64(spec.cols as u64);
        let staged;
        let data = if state.is_cuda() {
            let mut host = vec![0f32; spec.len()];
            state.read_buffer_into(spec.name, &mut host)?;
            staged = host;
            &staged[..]
        } else {
            state.buffer(spec.name)?
        };
        for x in data {
            w.bytes(&x.to_le_bytes());
        }
    }
    let crc = crc32(&w.out[..w.pos]);
    w.u32(crc);
    debug_assert_eq!(w.pos, size);
    Ok(size)
}

/// Replaces the state's step count, hyperparameters and buffers with those of `bytes`.
/// Returns `CorruptCheckpoint` for bytes that do not validate and `InvalidArgument` for a
/// valid checkpoint of another shape; either way the state is unchanged.
pub fn load(state: &mut State, bytes: &[u8]) -> Result<()> {
    let parsed = parse(bytes)?;
    let desc = TensorDesc { rows: parsed.rows, cols: parsed.cols, ..*state.desc() };
    let plan = Plan::sharded(&parsed.config, &desc, parsed.shard)
        .map_err(|e| corrupt(format!("invalid configuration or shard: {e}")))?;
    if parsed.resolved_layout != layout_code(plan.layout) {
        return Err(corrupt(format!("layout field {} does not match the configuration", parsed.resolved_layout)));
    }
    let p = *state.plan();
    // Replicated factors load into any shard of the same matrix.
    let same_shape = Plan { shard: p.shard, ..plan } == p;
    if !same_shape || !parsed.config.same_structure(state.config()) {
        return Err(Error::InvalidArgument(format!(
            "checkpoint holds a {}x{} {:?} {:?} rank-{} state, this state is {}x{} {:?} {:?} rank-{}",
            plan.rows, plan.cols, plan.algorithm, plan.layout, plan.rank, p.rows, p.cols, p.algorithm, p.layout, p.rank
        )));
    }
    if plan.layout == Layout::Dense && plan.shard != p.shard {
        return Err(Error::InvalidArgument(format!(
            "checkpoint holds the DENSE moments of elements [{}, {}), this state holds [{}, {}): dense moments are per element, so load the checkpoint of the rank that held this range (or copy element ranges with mlorc_state_write_buffer)",
            plan.shard.begin, plan.shard.end, p.shard.begin, p.shard.end
        )));
    }
    let specs = plan.buffers();
    if parsed.buffers.len() != specs.len() {
        return Err(corrupt(format!("{} buffers, {} expected", parsed.buffers.len(), specs.len())));
    }
    for (spec, (name, rows, cols, _)) in specs.iter().zip(&parsed.buffers) {
        if spec.name.as_bytes() != *name || spec.rows != *rows || spec.cols != *cols {
            return Err(corrupt(format!(
                "buffer {:?} {rows}x{cols} where {} {}x{} was expected",
                String::from_utf8_lossy(name),
                spec.name,
                spec.rows,
                spec.cols
            )));
        }
    }
    // Everything validated: from here on only a device copy can fail.
    fn floats(data: &[u8]) -> impl Iterator<Item = f32> + '_ {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    if state.is_cuda() {
        for (spec, (_, _, _, data)) in specs.iter().zip(&parsed.buffers) {
            state.write_buffer(spec.name, &floats(data).collect::<Vec<_>>())?;
        }
    } else {
        for (buffer, (_, _, _, data)) in state.buffers_mut().into_iter().zip(&parsed.buffers) {
            for (dst, src) in buffer.iter_mut().zip(floats(data)) {
                *dst = src;
            }
        }
    }
    state.try_set_step_count(parsed.step)?;
    state.set_config(&parsed.config)
}

struct Parsed<'a> {
    config: Config,
    resolved_layout: u32,
    step: u64,
    rows: usize,
    cols: usize,
    shard: Shard,
    buffers: Vec<(&'a [u8], usize, usize, &'a [u8])>,
}

fn corrupt(msg: String) -> Error {
    Error::CorruptCheckpoint(format!("corrupt checkpoint: {msg}"))
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    if bytes.len() < HEADER_BYTES_V1 + 4 {
        return Err(corrupt(format!("{} bytes, shorter than any checkpoint", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic (not an mlorc checkpoint)".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32(body) != stored {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut r = Reader { data: body, pos: 8 };
    let version = r.u32()?;
    if version != 1 && version != FORMAT_VERSION {
        return Err(corrupt(format!("format version {version}, this library reads 1 to {FORMAT_VERSION}")));
    }
    if r.u32()? != 0 {
        return Err(corrupt("unknown flags".into()));
    }
    let algorithm = match r.u32()? {
        0 => Algorithm::AdamW,
        1 => Algorithm::Lion,
        v => return Err(corrupt(format!("unknown algorithm {v}"))),
    };
    let layout = match r.u32()? {
        0 => LayoutRequest::Auto,
        1 => LayoutRequest::Factored,
        2 => LayoutRequest::Dense,
        v => return Err(corrupt(format!("unknown layout {v}"))),
    };
    let resolved = r.u32()?;
    let rank = r.u32()?;
    let oversampling = r.u32()?;
    let power_iters = r.u32()?;
    let bias_correction = r.flag()?;
    let stochastic_rounding = r.flag()?;
    let beta1 = r.f64()?;
    let beta2 = r.f64()?;
    let eps = r.f64()?;
    let weight_decay = r.f64()?;
    let seed = r.u64()?;
    let step = r.u64()?;
    let rows = r.size()?;
    let cols = r.size()?;
    let shard = if version >= 2 {
        Shard { begin: r.size()?, end: r.size()? }
    } else {
        Shard::whole(rows.saturating_mul(cols))
    };
    let config = Config {
        algorithm,
        layout,
        rank,
        oversampling,
        power_iters,
        beta1,
        beta2,
        eps,
        weight_decay,
        bias_correction,
        stochastic_rounding,
        seed,
    };
    config.validate().map_err(|e| corrupt(format!("invalid configuration: {e}")))?;
    let count = r.u32()? as usize;
    if r.u32()? != 0 {
        return Err(corrupt("reserved field is not zero".into()));
    }
    if count > 6 {
        return Err(corrupt(format!("{count} buffers")));
    }
    let mut buffers = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = r.u32()? as usize;
        if name_len > 64 {
            return Err(corrupt(format!("buffer name of {name_len} bytes")));
        }
        let name = r.take(name_len)?;
        let brows = r.size()?;
        let bcols = r.size()?;
        let floats = brows.checked_mul(bcols).and_then(|e| e.checked_mul(4));
        let data = r.take(floats.ok_or_else(|| corrupt("buffer size overflows".into()))?)?;
        buffers.push((name, brows, bcols, data));
    }
    if r.pos != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - r.pos)));
    }
    Ok(Parsed { config, resolved_layout: resolved, step, rows, cols, shard, buffers })
}

fn algorithm_code(a: Algorithm) -> u32 {
    match a {
        Algorithm::AdamW => 0,
        Algorithm::Lion => 1,
    }
}

fn layout_request_code(l: LayoutRequest) -> u32 {
    match l {
        LayoutRequest::Auto => 0,
        LayoutRequest::Factored => 1,
        LayoutRequest::Dense => 2,
    }
}

fn layout_code(l: Layout) -> u32 {
    match l {
        Layout::Factored => 1,
        Layout::Dense => 2,
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| corrupt("truncated".into()))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn flag(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(corrupt(format!("flag value {v}"))),
        }
    }
    fn size(&mut self) -> Result<usize> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| corrupt(format!("size {v} does not fit this machine")))
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3, as zlib's crc32).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
