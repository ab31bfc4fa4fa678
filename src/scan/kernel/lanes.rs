//! The layout work shared by the SIMD kernels, which put one channel in each
//! vector lane.
//!
//! With lanes = channels of one group, `Bs[g,n,t]` and `Cs[g,n,t]` are the
//! same for every lane (a broadcast), the recurrence over t stays a plain
//! per-lane loop, and no horizontal reduction is ever needed (reducing over
//! the N states instead would end every step with one). A block of `L`
//! channels (the kernel's vector width: 8 for AVX2 and NEON, 16 for AVX-512)
//! is scanned one time chunk at a time:
//!
//! 1. its delta and u rows are transposed into a small time-major scratch
//!    ([`Step`] per time step), lanes past the block's last channel being 0;
//!    a low-rank delta (contract version 3) is formed there instead by
//!    [`project_delta`] with [`LaneMath::add_terms`], R vector FMAs per
//!    step;
//! 2. [`LaneMath::prepare_steps`] turns them into dt, dt*u and D*u once per
//!    (channel, step), not once per state;
//! 3. [`LaneMath::scan_states`] runs the recurrence state by state, each state
//!    `h` living in a register across the chunk, and accumulates C h into y;
//! 4. y is transposed back into the output rows of the real channels.
//!
//! Zero lanes are harmless: A = 0, u = 0 and D = 0 keep their h and y at 0.
//! Steps 1 and 4 are scalar; they touch each (channel, step) once, against N
//! vector state updates for step 3. The 2-D scan's directions share their
//! channels' u and y, so [`scan_directions`] transposes those once per task
//! into one `[f32; L]` per pixel, and steps 1 and 4 become a vector copy and
//! a vector add per step (on the Intel Xeon VM, the nano model's scan ops
//! took 13% less time, 8.9 to 7.7 ms a frame at 1 thread).
//!
//! At the real shapes the inputs and outputs stream from DRAM, and a chunk
//! touches 24 rows (delta, u and y of 8 channels) too briefly for the
//! hardware prefetcher: software prefetches of the next chunk's inputs and of
//! this chunk's outputs, issued before the compute, gained about 12% on a
//! 2-core EPYC (8 lanes).

use std::cell::RefCell;
use std::ops::Range;

use smallvec::{smallvec, SmallVec};

use super::{ChannelBlock, Delta, INLINE_STATES};

/// Time steps per chunk: the scratch (3 x 64 x L f32, 6 KiB at 8 lanes and
/// 12 KiB at 16) stays in L1 while the N state passes re-read it.
const TIME_CHUNK: usize = 64;

/// One time step of a vector block of `L` channels, as [`LaneMath`] sees it.
#[derive(Clone, Copy)]
pub(super) struct Step<const L: usize> {
    /// Holds delta as loaded, then dt once [`LaneMath::prepare_steps`] ran.
    pub dt: [f32; L],
    /// Holds u as loaded, then dt * u.
    pub dt_u: [f32; L],
    /// D * u, then y as [`LaneMath::scan_states`] adds C h into it.
    pub y: [f32; L],
}

impl<const L: usize> Step<L> {
    /// A step with every lane 0: what lanes past a block's last channel hold.
    const ZERO: Self = Step {
        dt: [0.0; L],
        dt_u: [0.0; L],
        y: [0.0; L],
    };
}

/// One row of `L` values per state.
pub(super) type StateRows<const L: usize> = SmallVec<[[f32; L]; INLINE_STATES]>;

/// The per-channel constants of a vector block, transposed into lanes.
pub(super) struct LaneParams<const L: usize> {
    pub delta_bias: [f32; L],
    pub d: [f32; L],
    /// Row n holds the lanes' A[c, n].
    pub a: StateRows<L>,
    /// Row r holds the lanes' dt_weight[c, r]: empty unless delta is low-rank.
    pub dt_weight: StateRows<L>,
    /// Every lane's `dt A[n]` is <= 0 (or NaN): dt >= 0, since it comes out
    /// of softplus, and every A <= 0, as a trained model's are. The decay
    /// exp(dt A) can then be computed as 2^(dt A log2 e), with no clamp
    /// from above (the `decay` of [`approx`](super::approx)).
    pub dt_a_non_positive: bool,
}

/// Rows of `len` steps (a group's `Bs`, `Cs` or `dt_low`), seen over the
/// steps of one time chunk.
pub(super) struct ChunkRows<'a> {
    rows: &'a [f32],
    len: usize,
    steps: Range<usize>,
}

impl<'a> ChunkRows<'a> {
    fn new(rows: &'a [f32], len: usize, steps: Range<usize>) -> Self {
        ChunkRows { rows, len, steps }
    }

    /// Each row's values over the chunk.
    pub fn iter(&self) -> impl Iterator<Item = &'a [f32]> + '_ {
        let rows = self.rows.chunks_exact(self.len);
        rows.map(|row| &row[self.steps.clone()])
    }
}

/// `Bs` and `Cs` of the block's group over the steps of one time chunk.
pub(super) struct GroupRows<'a> {
    b: ChunkRows<'a>,
    c: ChunkRows<'a>,
}

impl<'a> GroupRows<'a> {
    fn new(block: &ChannelBlock<'a>, steps: Range<usize>) -> Self {
        GroupRows {
            b: ChunkRows::new(block.b, block.len, steps.clone()),
            c: ChunkRows::new(block.c, block.len, steps),
        }
    }

    /// (Bs[n, chunk], Cs[n, chunk]) for n = 0..N.
    pub fn state_rows(&self) -> impl Iterator<Item = (&'a [f32], &'a [f32])> + '_ {
        self.b.iter().zip(self.c.iter())
    }
}

/// The vector maths of a SIMD kernel of `L` lanes, implemented per
/// architecture.
pub(super) trait LaneMath<const L: usize> {
    /// Hints the CPU to start loading `data` into the cache.
    fn prefetch(&self, data: &[f32]);

    /// Adds `R` terms `weight[r] rows[r][t]` to each step's delta,
    /// lane-wise and in r order, as FMAs on the delta or, if `first`, on 0
    /// (the reference's operations, so the same bits).
    fn add_terms<const R: usize>(
        &self,
        weight: &[[f32; L]],
        rows: &[&[f32]],
        first: bool,
        steps: &mut [Step<L>],
    );

    /// Turns each step's loaded delta into dt (with softplus when asked) and
    /// its u into dt * u, and sets its y to D * u.
    fn prepare_steps(&self, params: &LaneParams<L>, delta_softplus: bool, steps: &mut [Step<L>]);

    /// For each state n, carries `h[n]` (the lanes' state before the chunk,
    /// updated to the state after it) through the chunk,
    /// `h = exp(dt A[n]) h + dt_u Bs[n,t]`, adding `Cs[n,t] h` to each y.
    /// With `CLAMP_ABOVE`, `exp(dt A[n])` is the vector exp, clamped from
    /// above; without, it is the decay `2^(dt A[n] log2 e)`, for blocks where
    /// [`LaneParams::dt_a_non_positive`] holds.
    fn scan_states<const CLAMP_ABOVE: bool>(
        &self,
        params: &LaneParams<L>,
        rows: &GroupRows,
        h: &mut [[f32; L]],
        steps: &mut [Step<L>],
    );
}

/// Where a vector of channels reads its u and puts its y.
enum LaneIo<'s, const L: usize> {
    /// u from the block's rows, through its traversal; y into these rows
    /// (`[channels, len]`), written in place or added at each step's pixel.
    Rows(&'s mut [f32]),
    /// u and y already transposed into lanes, one `[f32; L]` per pixel (see
    /// [`scan_directions`]); y is added to at each step's pixel.
    Lanes {
        u: &'s [[f32; L]],
        y: &'s mut [[f32; L]],
    },
}

/// Scans `block` into `y` (`[channels, len]`) with `math`, `L` channels at a
/// time. Its scratch is on the stack: no allocation at the contract's N.
pub(super) fn scan_block<const L: usize>(
    math: &impl LaneMath<L>,
    block: &ChannelBlock,
    y: &mut [f32],
) {
    let len = block.len;
    for (vector, y_rows) in y.chunks_mut(L * len).enumerate() {
        let channels = vector * L..vector * L + y_rows.len() / len;
        scan_vector(math, block, channels, LaneIo::Rows(y_rows));
    }
}

thread_local! {
    /// [`scan_directions`]' u and y in lanes, kept per thread: a warm scan
    /// allocates nothing here.
    static LANE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Scans the directions of a 2-D scan task (`blocks[k]`: direction k's block
/// of the same channels, at most `L` of them) into `y` (`[channels, len]`),
/// the sum over the directions in their order. The channels' u is put in
/// lanes once for all the directions, and their y summed in lanes and put
/// back in rows once at the end: per step a vector copy and a vector add,
/// where [`scan_block`] moves each lane's value on its own for every
/// direction. The same sums in the same order, so the same bits.
pub(super) fn scan_directions<const L: usize>(
    math: &impl LaneMath<L>,
    blocks: &[ChannelBlock],
    y: &mut [f32],
) {
    let Some(first) = blocks.first() else {
        return;
    };
    let len = first.len;
    let channels = y.len() / len;
    if channels > L {
        blocks.iter().for_each(|block| scan_block(math, block, y));
        return;
    }
    LANE_SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        scratch.resize(2 * len * L, 0.0);
        let (u_lanes, y_lanes) = scratch.split_at_mut(len * L);
        let (u_lanes, _) = u_lanes.as_chunks_mut::<L>();
        let (y_lanes, _) = y_lanes.as_chunks_mut::<L>();
        for (lane, u_row) in first.u.chunks_exact(len).enumerate() {
            for (pixel, &u) in u_lanes.iter_mut().zip(u_row) {
                pixel[lane] = u;
            }
        }
        for block in blocks {
            let io = LaneIo::Lanes {
                u: u_lanes,
                y: &mut *y_lanes,
            };
            scan_vector(math, block, 0..channels, io);
        }
        for (lane, y_row) in y.chunks_exact_mut(len).enumerate() {
            for (y, pixel) in y_row.iter_mut().zip(&*y_lanes) {
                *y = pixel[lane];
            }
        }
    });
}

/// Scans `channels` of `block` (at most `L`), one vector, through `io`.
fn scan_vector<const L: usize>(
    math: &impl LaneMath<L>,
    block: &ChannelBlock,
    channels: Range<usize>,
    mut io: LaneIo<L>,
) {
    let len = block.len;
    let mut steps = [Step::ZERO; TIME_CHUNK];
    let mut h: StateRows<L> = smallvec![[0.0; L]; block.state];
    let rank = match block.delta {
        Delta::Rows(_) => 0,
        Delta::LowRank { rank, .. } => rank,
    };
    let mut params = LaneParams {
        delta_bias: [0.0; L],
        d: [0.0; L],
        a: h.clone(),
        dt_weight: smallvec![[0.0; L]; rank],
        dt_a_non_positive: false,
    };
    load_params(block, channels.clone(), &mut params);
    for start in (0..len).step_by(TIME_CHUNK) {
        let chunk = start..(start + TIME_CHUNK).min(len);
        let steps = &mut steps[..chunk.len()];
        load_steps(block, channels.clone(), chunk.clone(), &io, steps);
        if let Delta::LowRank { low, .. } = block.delta {
            project_delta(
                math,
                &params.dt_weight,
                &ChunkRows::new(low, len, chunk.clone()),
                steps,
            );
        }
        if let (None, LaneIo::Rows(y_rows)) = (block.traversal, &io) {
            prefetch(math, block, channels.clone(), chunk.clone(), y_rows);
        }
        math.prepare_steps(&params, block.delta_softplus, steps);
        let rows = GroupRows::new(block, chunk.clone());
        if params.dt_a_non_positive {
            math.scan_states::<false>(&params, &rows, &mut h, steps);
        } else {
            math.scan_states::<true>(&params, &rows, &mut h, steps);
        }
        store_y(block, steps, chunk, &mut io);
    }
}

/// Sets each step's delta to `sum_r weight[r] low[r, t]` lane-wise, r in
/// order, as FMAs on 0. Four terms at a time keep their weights in registers
/// across the steps; the sum is the same chain of FMAs whatever the grouping.
fn project_delta<const L: usize>(
    math: &impl LaneMath<L>,
    weight: &[[f32; L]],
    low: &ChunkRows,
    steps: &mut [Step<L>],
) {
    let low_rows: SmallVec<[&[f32]; INLINE_STATES]> = low.iter().collect();
    let groups = weight.chunks_exact(4).zip(low_rows.chunks_exact(4));
    for (group, (weight, rows)) in groups.enumerate() {
        math.add_terms::<4>(weight, rows, group == 0, steps);
    }
    let done = weight.len() / 4 * 4;
    for (r, (weight_r, low_r)) in weight.iter().zip(&low_rows).enumerate().skip(done) {
        math.add_terms::<1>(std::slice::from_ref(weight_r), &[low_r], r == 0, steps);
    }
}

/// Prefetches the rows of `channels` that the chunk after `chunk` will read
/// and that `chunk` itself will write (in `y_rows`), so that their DRAM
/// latency overlaps with this chunk's compute.
fn prefetch<const L: usize>(
    math: &impl LaneMath<L>,
    block: &ChannelBlock,
    channels: Range<usize>,
    chunk: Range<usize>,
    y_rows: &[f32],
) {
    let next_chunk = chunk.end..(chunk.end + TIME_CHUNK).min(block.len);
    let rows = channels.start * block.len..channels.end * block.len;
    let delta_rows = match block.delta {
        Delta::Rows(delta) => &delta[rows.clone()],
        Delta::LowRank { low, .. } => low,
    };
    let targets = [
        (delta_rows, &next_chunk),
        (&block.u[rows], &next_chunk),
        (y_rows, &chunk),
    ];
    for (tensor_rows, steps) in targets {
        for row in tensor_rows.chunks_exact(block.len) {
            math.prefetch(&row[steps.clone()]);
        }
    }
}

/// Transposes the constants of `channels` (at most `L` of the block) into
/// `params`, zero in the lanes past the last channel.
fn load_params<const L: usize>(
    block: &ChannelBlock,
    channels: Range<usize>,
    params: &mut LaneParams<L>,
) {
    params.delta_bias = [0.0; L];
    params.d = [0.0; L];
    params.a.fill([0.0; L]);
    params.dt_weight.fill([0.0; L]);
    for (lane, channel) in channels.enumerate() {
        params.delta_bias[lane] = block.delta_bias[channel];
        params.d[lane] = block.d[channel];
        let a_row = &block.a[channel * block.state..][..block.state];
        for (a_n, &a) in params.a.iter_mut().zip(a_row) {
            a_n[lane] = a;
        }
        if let Delta::LowRank { weight, rank, .. } = block.delta {
            for (weight_r, &w) in params.dt_weight.iter_mut().zip(&weight[channel * rank..]) {
                weight_r[lane] = w;
            }
        }
    }
    params.dt_a_non_positive = block.delta_softplus && params.a.iter().flatten().all(|&a| a <= 0.0);
}

/// Transposes delta (when given as rows) and u of `channels` over the
/// `chunk` steps into `steps` (`dt` and `dt_u`), zero in the lanes past the
/// last channel; u comes already in lanes with [`LaneIo::Lanes`].
fn load_steps<const L: usize>(
    block: &ChannelBlock,
    channels: Range<usize>,
    chunk: Range<usize>,
    io: &LaneIo<L>,
    steps: &mut [Step<L>],
) {
    if channels.len() < L {
        steps.fill(Step::ZERO);
    }
    let u_rows = match io {
        LaneIo::Rows(_) => Some(block.u),
        LaneIo::Lanes { u, .. } => {
            for (step, t) in steps.iter_mut().zip(chunk.clone()) {
                step.dt_u = u[block.position(t)];
            }
            None
        }
    };
    let delta_rows = match block.delta {
        Delta::Rows(delta) => Some(delta),
        Delta::LowRank { .. } => None,
    };
    for (lane, channel) in channels.enumerate() {
        let row = channel * block.len..(channel + 1) * block.len;
        if let Some(u) = u_rows {
            gather_lane(block, &u[row.clone()], chunk.clone(), steps, |step| {
                &mut step.dt_u[lane]
            });
        }
        if let Some(delta) = delta_rows {
            gather_lane(block, &delta[row], chunk.clone(), steps, |step| {
                &mut step.dt[lane]
            });
        }
    }
}

/// Sets each step's lane picked by `lane` to the value of `row` (one
/// channel's L values) at the step's position.
fn gather_lane<const L: usize>(
    block: &ChannelBlock,
    row: &[f32],
    chunk: Range<usize>,
    steps: &mut [Step<L>],
    lane: impl Fn(&mut Step<L>) -> &mut f32,
) {
    for (step, t) in steps.iter_mut().zip(chunk) {
        *lane(step) = row[block.position(t)];
    }
}

/// Puts the steps' y into `io` over `chunk`: transposed back into the rows
/// (`[channels, len]`), written in place or added at each step's pixel; or,
/// in lanes, added at each step's pixel.
fn store_y<const L: usize>(
    block: &ChannelBlock,
    steps: &[Step<L>],
    chunk: Range<usize>,
    io: &mut LaneIo<L>,
) {
    let y_rows = match io {
        LaneIo::Rows(y_rows) => y_rows,
        LaneIo::Lanes { y, .. } => {
            for (step, t) in steps.iter().zip(chunk) {
                let pixel = &mut y[block.position(t)];
                *pixel = std::array::from_fn(|lane| pixel[lane] + step.y[lane]);
            }
            return;
        }
    };
    for (lane, y_row) in y_rows.chunks_exact_mut(block.len).enumerate() {
        match block.traversal {
            None => {
                for (y, step) in y_row[chunk.clone()].iter_mut().zip(steps) {
                    *y = step.y[lane];
                }
            }
            Some(order) => {
                for (&position, step) in order[chunk.clone()].iter().zip(steps) {
                    y_row[position as usize] += step.y[lane];
                }
            }
        }
    }
}
