//! Starting the ranks of one split generation: a thread per card, each joining the communicators
//! of its [`Layout`] and then running the same work on its share.

use super::local::LocalGroup;
use super::{Collective, GroupKind, Layout, SequenceParallel, Split};
#[cfg(feature = "nccl")]
use anyhow::Context;
use anyhow::{Result, bail};
use candle_core::Device;
use std::sync::{Arc, Mutex};

/// What one rank runs with.
pub struct RankContext {
    pub rank: usize,
    pub device: Device,
    pub split: Split,
}

/// How the ranks of one communicator meet.
enum Meeting {
    /// CPU lanes: the handles of an in-process group.
    Local(Vec<Arc<LocalGroup>>),
    #[cfg(feature = "nccl")]
    Nccl(super::nccl::UniqueId),
}

/// Runs `work` once per rank of `layout`, rank `r` on `devices[r]`, and returns every rank's result
/// in rank order. A rank that fails stops its CPU peers at their next exchange, and the error of
/// the rank that failed first is returned (not its peers' "stopped" errors); a rank whose
/// sequence group could not share out a call's tokens fails with that [`super::SplitRefused`].
pub fn run_ranks<T: Send>(
    layout: Layout,
    devices: &[Device],
    work: impl Fn(RankContext) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if devices.len() != layout.ranks() {
        bail!(
            "this split needs {} cards, {} were given",
            layout.ranks(),
            devices.len()
        );
    }
    let cpu = devices.iter().all(Device::is_cpu);
    if !cpu && !devices.iter().all(Device::is_cuda) {
        bail!("a split generation runs on CUDA cards only or on CPU lanes only");
    }
    let groups = layout.groups();
    let meetings = groups
        .iter()
        .map(|(_, members)| meeting(cpu, members.len()))
        .collect::<Result<Vec<_>>>()?;
    let abort_all = |why: &str| {
        for meeting in &meetings {
            #[cfg_attr(not(feature = "nccl"), allow(irrefutable_let_patterns))]
            if let Meeting::Local(handles) = meeting {
                handles.iter().for_each(|h| h.abort(why));
            }
        }
    };
    let first_failure = Mutex::new(None);
    let (groups, meetings, work, first_failure) = (&groups, &meetings, &work, &first_failure);
    std::thread::scope(|s| {
        let ranks: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, device)| {
                s.spawn(move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let split = join(rank, device, groups, meetings)?;
                        let sequence = split.sequence.clone();
                        work(RankContext {
                            rank,
                            device: device.clone(),
                            split,
                        })
                        .map_err(|e| {
                            // Too few tokens to share, found where the transformer shards them:
                            // the same on every attempt, so said in the type callers act on.
                            match sequence.as_deref().and_then(SequenceParallel::refused) {
                                Some(refused) => anyhow::Error::new(refused.clone()),
                                None => e,
                            }
                        })
                    }))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("rank {rank} panicked")));
                    if let Err(e) = &outcome {
                        first_failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(rank);
                        abort_all(&format!("rank {rank} failed: {e:#}"));
                    }
                    outcome
                })
            })
            .collect();
        let mut outcomes: Vec<Result<T>> = ranks
            .into_iter()
            .map(|rank| rank.join().expect("rank panics are caught"))
            .collect();
        match *first_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(rank) => Err(outcomes.swap_remove(rank).err().expect("that rank failed")),
            None => outcomes.into_iter().collect(),
        }
    })
}

/// Runs `work` on every item at once, a thread each (loading a model on each card of a split),
/// and returns the results in order, or the error of the first item in order that failed.
pub fn on_every_card<I: Send, T: Send>(
    items: Vec<I>,
    work: impl Fn(usize, I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let work = &work;
    std::thread::scope(|s| {
        let threads: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| s.spawn(move || work(i, item)))
            .collect();
        // Every thread is joined before the first error is picked: a panic left unjoined would
        // panic the scope.
        let outcomes: Vec<Result<T>> = threads
            .into_iter()
            .enumerate()
            .map(|(i, thread)| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("card {i} panicked")))
            })
            .collect();
        outcomes.into_iter().collect()
    })
}

fn meeting(cpu: bool, size: usize) -> Result<Meeting> {
    if cpu {
        return Ok(Meeting::Local(LocalGroup::create(size)));
    }
    #[cfg(feature = "nccl")]
    {
        Ok(Meeting::Nccl(super::nccl::UniqueId::new()?))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = size;
        bail!(
            "this build cannot split a generation across CUDA cards: it was built without NCCL \
             (scripts/build-cuda.sh with VIDEOSDGX_NCCL=1)"
        )
    }
}

/// Joins the communicators `rank` belongs to, in the layout's order (the same on every rank, so
/// NCCL's blocking joins cannot wait on each other in a cycle).
#[cfg_attr(not(feature = "nccl"), allow(unused_variables))]
fn join(
    rank: usize,
    device: &Device,
    groups: &[(GroupKind, Vec<usize>)],
    meetings: &[Meeting],
) -> Result<Split> {
    let mut split = Split::default();
    for ((kind, members), meeting) in groups.iter().zip(meetings) {
        let Some(member) = members.iter().position(|&m| m == rank) else {
            continue;
        };
        let group: Arc<dyn Collective> = match meeting {
            Meeting::Local(handles) => handles[member].clone(),
            #[cfg(feature = "nccl")]
            Meeting::Nccl(id) => Arc::new(
                super::nccl::NcclGroup::join(*id, member, members.len(), device)
                    .with_context(|| format!("rank {rank} joining its {kind:?} group"))?,
            ),
        };
        match kind {
            GroupKind::World => split.world = Some(group),
            GroupKind::Sequence => split.sequence = Some(Arc::new(SequenceParallel::new(group))),
            GroupKind::Cfg => split.cfg = Some(group),
        }
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::agree_to_stop;

    #[test]
    fn the_rank_that_failed_first_names_the_error_and_its_peers_stop() {
        let devices = vec![Device::Cpu; 3];
        let err = run_ranks(Layout::new(3, false).unwrap(), &devices, |rank| {
            if rank.rank == 2 {
                bail!("card 2 ran out of memory");
            }
            // Waits for rank 2, which never comes: the abort releases it.
            let world = rank.split.world.expect("a world group");
            agree_to_stop(world.as_ref(), false, &rank.device)?;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(format!("{err:#}"), "card 2 ran out of memory");
        let err = run_ranks(Layout::new(2, false).unwrap(), &devices[..2], |rank| {
            assert!(rank.rank == 0, "rank 1 panics");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "rank 1 panicked");
    }

    #[test]
    fn work_on_every_card_comes_back_in_order_with_the_first_failure_in_order() {
        let squares = on_every_card(vec![1, 2, 3], |i, n| Ok((i, n * n))).unwrap();
        assert_eq!(squares, [(0, 1), (1, 4), (2, 9)]);
        // Card 2 panics, card 1 fails: card 1's error, and the panic does not escape.
        let err = on_every_card(vec![(); 3], |i, ()| match i {
            1 => bail!("card 1 cannot load the model"),
            2 => panic!("card 2 panics"),
            _ => Ok(()),
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "card 1 cannot load the model");
        let err = on_every_card(vec![(); 2], |i, ()| {
            assert!(i == 0, "card 1 panics");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "card 1 panicked");
    }

    #[test]
    fn one_rank_wishing_to_stop_stops_every_rank() {
        let devices = vec![Device::Cpu; 3];
        let answers = run_ranks(Layout::new(3, false).unwrap(), &devices, |rank| {
            let world = rank.split.world.expect("a world group");
            Ok([
                agree_to_stop(world.as_ref(), false, &rank.device)?,
                agree_to_stop(world.as_ref(), rank.rank == 1, &rank.device)?,
            ])
        })
        .unwrap();
        assert_eq!(answers, vec![[false, true]; 3]);
    }
}
