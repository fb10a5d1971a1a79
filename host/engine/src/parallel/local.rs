//! The exchange between rank threads of one process on the CPU: tensors handed over through a
//! shared mailbox. CPU lanes (`--gpus cpu,cpu`) run the split path with it, which is how the
//! tests check that a split generation matches an unsplit one without GPUs; CUDA ranks use NCCL.

use super::{Collective, CommTime};
use candle_core::{Result, Shape, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// One rank's handle on an in-process group.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
    spent: Mutex<CommTime>,
}

struct Shared {
    size: usize,
    state: Mutex<Round>,
    changed: Condvar,
}

/// One exchange: every rank deposits its parcels, then every rank collects its own.
#[derive(Default)]
struct Round {
    mailbox: Vec<Option<Vec<Tensor>>>,
    deposited: usize,
    collected: usize,
    collecting: bool,
    failed: Option<String>,
}

impl LocalGroup {
    /// The handles of a new group of `size` ranks, in rank order.
    pub fn create(size: usize) -> Vec<Arc<LocalGroup>> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(Round {
                mailbox: vec![None; size],
                ..Round::default()
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| {
                Arc::new(LocalGroup {
                    rank,
                    shared: shared.clone(),
                    spent: Mutex::new(CommTime::default()),
                })
            })
            .collect()
    }

    /// Fails every exchange of the group, now and later (a rank failed, so its peers must not
    /// wait for it).
    pub fn abort(&self, why: &str) {
        let mut round = self.lock();
        round.failed.get_or_insert_with(|| why.to_string());
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` holds, failing if the group was aborted.
    fn wait_until<'a>(
        &self,
        mut round: MutexGuard<'a, Round>,
        ready: impl Fn(&Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>> {
        loop {
            if let Some(why) = &round.failed {
                candle_core::bail!("rank {}: the split generation stopped: {why}", self.rank);
            }
            if ready(&round) {
                return Ok(round);
            }
            round = self
                .shared
                .changed
                .wait(round)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn exchange_time(&self) -> Result<CommTime> {
        Ok(*self.spent.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn exchange(&self, outgoing: &[Tensor], incoming: &[Shape]) -> Result<Vec<Tensor>> {
        let start = Instant::now();
        let size = self.shared.size;
        if outgoing.len() != size || incoming.len() != size {
            candle_core::bail!(
                "an exchange in a group of {size} takes {size} parcels each way, got {} and {}",
                outgoing.len(),
                incoming.len()
            );
        }
        // Deposit, once the previous round has been collected by everyone.
        let mut round = self.wait_until(self.lock(), |r| !r.collecting)?;
        round.mailbox[self.rank] = Some(outgoing.to_vec());
        round.deposited += 1;
        if round.deposited == size {
            round.collecting = true;
            self.shared.changed.notify_all();
        }
        let mut round = self.wait_until(round, |r| r.collecting)?;
        let received = round
            .mailbox
            .iter()
            .map(|parcels| parcels.as_ref().expect("every rank deposited")[self.rank].clone())
            .collect::<Vec<_>>();
        round.collected += 1;
        if round.collected == size {
            round.mailbox.iter_mut().for_each(|m| *m = None);
            round.deposited = 0;
            round.collected = 0;
            round.collecting = false;
            self.shared.changed.notify_all();
        }
        drop(round);
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.exchanges += 1;
        spent.ms += start.elapsed().as_secs_f64() * 1e3;
        drop(spent);
        for (p, (tensor, shape)) in received.iter().zip(incoming).enumerate() {
            if tensor.shape() != shape || tensor.dtype() != outgoing[p].dtype() {
                candle_core::bail!(
                    "rank {} expected {shape:?} ({:?}) from rank {p}, got {:?} ({:?})",
                    self.rank,
                    outgoing[p].dtype(),
                    tensor.shape(),
                    tensor.dtype()
                );
            }
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_rank_receives_what_each_peer_addressed_to_it_round_after_round() {
        let groups = LocalGroup::create(3);
        std::thread::scope(|s| {
            for group in &groups {
                s.spawn(move || {
                    for round in 0..50u32 {
                        let r = group.rank() as u32;
                        let outgoing: Vec<Tensor> = (0..3u32)
                            .map(|p| Tensor::new(&[round, r, p], &Device::Cpu).unwrap())
                            .collect();
                        let incoming = vec![Shape::from(3); 3];
                        let got = group.exchange(&outgoing, &incoming).unwrap();
                        for (p, t) in got.iter().enumerate() {
                            assert_eq!(t.to_vec1::<u32>().unwrap(), [round, p as u32, r]);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn an_aborted_group_fails_the_ranks_waiting_on_it() {
        let groups = LocalGroup::create(2);
        let waiting = groups[0].clone();
        let peer = std::thread::spawn(move || {
            let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
            waiting.exchange(&[t.clone(), t], &[Shape::from(1), Shape::from(1)])
        });
        groups[1].abort("rank 1 ran out of memory");
        let err = peer.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("rank 1 ran out of memory"), "{err}");
    }

    #[test]
    fn a_parcel_of_the_wrong_shape_is_refused() {
        let groups = LocalGroup::create(1);
        let t = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let err = groups[0]
            .exchange(&[t], &[Shape::from(3)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected [3]"), "{err}");
    }
}
