//! The exchange between CUDA ranks: NCCL point-to-point sends and receives in one group call,
//! on the stream candle launches the model's kernels on (so no extra synchronisation). A build
//! with the `nccl` feature links `libnccl.so.2` (the `nvidia-nccl-cu13` wheel's or the
//! distribution's), as candle links the other CUDA libraries.

use super::{Collective, CommTime};
use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaSlice, DeviceRepr};
use candle_core::cuda_backend::cudarc::nccl::{result, safe};
use candle_core::{CudaDevice, CudaStorage, DType, Device, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use std::sync::Mutex;

/// The bootstrap token of one communicator, made once and handed to every rank.
#[derive(Clone, Copy)]
pub struct UniqueId(safe::Id);

impl UniqueId {
    pub fn new() -> Result<Self> {
        safe::Id::new()
            .map(Self)
            .map_err(nccl_err("ncclGetUniqueId"))
    }
}

/// One rank's NCCL communicator, bound to the stream of its card.
pub struct NcclGroup {
    // NCCL communicators are not safe to use from two threads at once; the rank's thread is the
    // only user, the lock makes that a guarantee.
    comm: Mutex<SendComm>,
    device: CudaDevice,
    rank: usize,
    size: usize,
    /// Events around each exchange not yet read, and the time of those read.
    pending: Mutex<Vec<(CudaEvent, CudaEvent)>>,
    spent: Mutex<CommTime>,
}

struct SendComm(safe::Comm);
// SAFETY: an NCCL communicator may move between threads; concurrent use is prevented by the
// mutex around it.
unsafe impl Send for SendComm {}

impl NcclGroup {
    /// Joins the communicator `id` as `rank` of `size`; returns once every rank has joined.
    pub fn join(id: UniqueId, rank: usize, size: usize, device: &Device) -> Result<Self> {
        let Device::Cuda(device) = device else {
            candle_core::bail!("NCCL ranks run on CUDA devices, got {device:?}");
        };
        let stream = device.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context: {e}")))?;
        let comm = safe::Comm::from_rank(stream, rank, size, id.0)
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Self {
            comm: Mutex::new(SendComm(comm)),
            device: device.clone(),
            rank,
            size,
            pending: Mutex::new(Vec::new()),
            spent: Mutex::new(CommTime::default()),
        })
    }

    fn event(&self) -> Result<CudaEvent> {
        self.device
            .cuda_stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| candle_core::Error::Msg(format!("recording a CUDA event: {e}")))
    }

    fn exchange_typed<T: safe::NcclType + DeviceRepr + candle_core::cuda_backend::CudaDType>(
        &self,
        outgoing: &[Tensor],
        incoming: &[Shape],
    ) -> Result<Vec<Tensor>> {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let comm = &comm.0;
        let mut received: Vec<Option<CudaSlice<T>>> = Vec::with_capacity(self.size);
        for (p, shape) in incoming.iter().enumerate() {
            // A rank with no tokens sends and receives nothing (NCCL cannot allocate zero bytes).
            received.push(if p == self.rank || shape.elem_count() == 0 {
                None
            } else {
                // SAFETY: NCCL writes every element before the tensor is read (same stream).
                Some(unsafe { self.device.alloc::<T>(shape.elem_count()) }?)
            });
        }
        let storages: Vec<_> = outgoing.iter().map(|t| t.storage_and_layout()).collect();
        let start = self.event()?;
        result::group_start().map_err(nccl_err("ncclGroupStart"))?;
        let mut launched = Ok(());
        for (p, (storage, layout)) in storages.iter().enumerate() {
            let count = layout.shape().elem_count();
            if p == self.rank || count == 0 && incoming[p].elem_count() == 0 {
                continue;
            }
            let Storage::Cuda(cs) = &**storage else {
                launched = Err(candle_core::Error::Msg("NCCL sends CUDA tensors".into()));
                break;
            };
            let start = layout.start_offset();
            let sent = match count {
                0 => Ok(()),
                _ => cs.as_cuda_slice::<T>().and_then(|s| {
                    comm.send(&s.slice(start..start + count), p as i32)
                        .map_err(nccl_err("ncclSend"))
                }),
            }
            .and_then(|_| match received[p].as_mut() {
                None => Ok(()),
                Some(buffer) => comm
                    .recv(buffer, p as i32)
                    .map(drop)
                    .map_err(nccl_err("ncclRecv")),
            });
            if let Err(e) = sent {
                launched = Err(e);
                break;
            }
        }
        // The group must be closed even when a call in it failed.
        result::group_end().map_err(nccl_err("ncclGroupEnd"))?;
        launched?;
        let end = self.event()?;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((start, end));
        drop(storages);
        received
            .into_iter()
            .zip(incoming)
            .enumerate()
            .map(|(p, (slice, shape))| match slice {
                None if p == self.rank => Ok(outgoing[p].clone()),
                None => Tensor::zeros(shape, outgoing[p].dtype(), outgoing[p].device()),
                Some(slice) => Ok(Tensor::from_storage(
                    Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, self.device.clone())),
                    shape.clone(),
                    candle_core::op::BackpropOp::none(),
                    false,
                )),
            })
            .collect()
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn exchange_time(&self) -> Result<CommTime> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        for (start, end) in pending {
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| candle_core::Error::Msg(format!("timing an exchange: {e}")))?;
            spent.exchanges += 1;
            spent.ms += f64::from(ms);
        }
        Ok(*spent)
    }

    fn exchange(&self, outgoing: &[Tensor], incoming: &[Shape]) -> Result<Vec<Tensor>> {
        if outgoing.len() != self.size || incoming.len() != self.size {
            candle_core::bail!(
                "an exchange in a group of {} takes {} parcels each way, got {} and {}",
                self.size,
                self.size,
                outgoing.len(),
                incoming.len()
            );
        }
        if let Some(t) = outgoing.iter().find(|t| !t.is_contiguous()) {
            candle_core::bail!(
                "NCCL sends contiguous tensors, got strides {:?}",
                t.stride()
            );
        }
        match outgoing[self.rank].dtype() {
            DType::BF16 => self.exchange_typed::<bf16>(outgoing, incoming),
            DType::F16 => self.exchange_typed::<f16>(outgoing, incoming),
            DType::F32 => self.exchange_typed::<f32>(outgoing, incoming),
            other => candle_core::bail!("NCCL exchanges bf16, f16 or f32 tensors, got {other:?}"),
        }
    }
}

fn nccl_err(what: &'static str) -> impl Fn(result::NcclError) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("{what}: {e:?}"))
}
