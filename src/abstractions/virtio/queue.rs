// SPDX-License-Identifier: GPL-2.0

//! Virtqueues that carry boxed buffers, owned by the adapter and revocable.
//!
//! The adapter creates a device's virtqueues (from [`super::Driver::QUEUES`]) and keeps one
//! [`Slot`] per queue the driver takes. A driver's [`Virtqueue<B>`] is a handle on its slot: every
//! operation takes the slot's lock and finds the queue there. When the device goes away or
//! suspends, the adapter resets it, empties each slot under its lock, takes back every buffer
//! still queued (dropping it: its `Drop` gives back what it holds) and only then deletes the
//! queues; on resume it puts the new queues into the same slots.
//!
//! What safe code can do: queue buffers it owns, kick, and take used buffers back, from process
//! context, including with the task queued on a wait queue (the operations take a spinlock,
//! never sleep and never allocate: `GFP_ATOMIC`, and drivers that queue several entries per
//! buffer clear `VIRTIO_RING_F_INDIRECT_DESC`). Not from interrupt handlers such as
//! [`super::Driver::vq_done`]: the lock is not interrupt-safe, so that would deadlock.
//! What it cannot do: reach a deleted queue (a handle kept after removal finds its slot empty
//! and every operation fails or returns nothing), give the device memory it does not own (bytes
//! must lie inside the buffer's box or in an [`OutBuf`] it holds; scatter-gather entries come
//! from [`DeviceWritable`], an unsafe trait), get back a buffer of another type (a slot's type
//! is fixed when it is taken), or leak a queued buffer.

use core::{marker::PhantomData, mem::MaybeUninit, ptr::NonNull};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox, KVec},
    bindings, new_spinlock,
    prelude::*,
    str::CStr,
    sync::{Arc, SpinLock},
};

/// A virtqueue a driver declares: its name and the feature it exists with (`None`: always).
/// Queues whose feature is not negotiated are left out and the later ones move up, as the
/// virtio spec numbers them.
pub(crate) struct QueueSpec {
    /// The queue's name (shown in `/proc/interrupts` on virtio-pci).
    pub(crate) name: &'static CStr,
    /// The feature bit the queue depends on.
    pub(crate) feature: Option<u32>,
}

/// Queues a driver may declare, at most.
pub(crate) const MAX_QUEUES: usize = 8;

/// What a buffer shows the device.
pub(crate) enum Payload<'a> {
    /// Bytes the device reads. They must lie inside the buffer itself (they are checked); the
    /// buffer is boxed, so they do not move while it is queued.
    Out(&'a [u8]),
    /// The first bytes (as many as given) of an [`OutBuf`] the device reads.
    OutBuf(&'a OutBuf, usize),
    /// Memory the device may write, described by a scatter-gather table.
    In(&'a mut dyn DeviceWritable),
}

/// A byte buffer of its own allocation that a device reads, for payloads too large to sit
/// inside a buffer's box (up to a few pages).
///
/// A buffer that shows it as its payload owns it (or shares it, read-only, with others that keep
/// it alive), so it stays allocated and unchanged while the buffer is queued: changing its bytes
/// needs `&mut`.
///
/// # Invariants
///
/// `bytes` is a kmalloc allocation (physically contiguous, in the linear map) of at least one
/// byte, never reallocated.
pub(crate) struct OutBuf {
    bytes: KVec<u8>,
}

impl OutBuf {
    /// A zeroed buffer of `len` bytes (at least 1).
    pub(crate) fn new(len: usize) -> Result<Self> {
        // INVARIANT: `KVec` allocates with kmalloc; the length is fixed from here on.
        Ok(Self {
            bytes: KVec::from_elem(0u8, len.max(1), GFP_KERNEL)?,
        })
    }

    /// The bytes, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

/// Memory owned by a buffer that a device may write, described by a scatter-gather table.
///
/// # Safety
///
/// [`DeviceWritable::sg`] must return a table of `n > 0` initialised entries that lives inside
/// `self` or in memory `self` owns, so it stays in place while `self` does (a queued buffer is
/// boxed and does not move). Every entry must
/// describe memory that `self` owns exclusively: no other code reads or writes it, and it stays
/// allocated, until `self` is next used mutably or dropped.
pub(crate) unsafe trait DeviceWritable {
    /// The table and its length, `None` when there is nothing to describe.
    fn sg(&mut self) -> Option<(NonNull<bindings::scatterlist>, u32)>;
}

/// A buffer that a [`Virtqueue`] carries to the device. `'static`: a queued buffer may outlive
/// any borrow (the adapter drops leftovers at teardown).
pub(crate) trait Buffer: Send + 'static {
    /// What the device is shown.
    fn payload(&mut self) -> Payload<'_>;
}

/// A queue pointer, sendable because the slot's lock serialises its use.
struct RawVq(NonNull<bindings::virtqueue>);

// SAFETY: Virtqueue operations may run on any thread as long as they are serialised, which the
// slot's lock does.
unsafe impl Send for RawVq {}

struct SlotState {
    vq: Option<RawVq>,
    in_flight: usize,
}

/// One queue of a device, as the adapter and the driver's handle share it.
///
/// # Invariants
///
/// While `state.vq` is `Some`, it is a live virtqueue of the device, and every buffer queued on
/// it was queued through this slot with a `KBox<B>` pointer as token, for the `B` that `drain`
/// was instantiated with; `in_flight` counts those not yet taken back.
#[pin_data]
pub(super) struct Slot {
    #[pin]
    state: SpinLock<SlotState>,
    drain: unsafe fn(NonNull<bindings::virtqueue>),
}

/// Takes back and drops every buffer still on `vq`.
///
/// # Safety
///
/// `vq` must be live, its device reset, and every token on it a `KBox<B>` pointer.
unsafe fn drain<B>(vq: NonNull<bindings::virtqueue>) {
    loop {
        // SAFETY: `vq` is live and its device reset, as `virtqueue_detach_unused_buf` requires.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(vq.as_ptr()) };
        let Some(token) = NonNull::new(token.cast::<B>()) else {
            break;
        };
        // SAFETY: Tokens are `KBox<B>` pointers (caller's guarantee), detached exactly once.
        drop(unsafe { KBox::from_raw(token.as_ptr()) });
    }
}

impl Slot {
    /// Puts a new queue (after resume) into the slot.
    ///
    /// # Safety
    ///
    /// `vq` must be a live, empty virtqueue of the slot's device, live until the next
    /// [`Slot::revoke`].
    pub(super) unsafe fn arm(&self, vq: NonNull<bindings::virtqueue>) {
        let mut st = self.state.lock();
        // INVARIANT: a live queue with nothing queued.
        st.vq = Some(RawVq(vq));
        st.in_flight = 0;
    }

    /// Empties the slot and drops every buffer that was still queued.
    ///
    /// # Safety
    ///
    /// The device must be reset, so that it no longer uses any buffer.
    pub(super) unsafe fn revoke(&self) {
        let vq = {
            let mut st = self.state.lock();
            st.in_flight = 0;
            st.vq.take()
        };
        // Outside the lock: dropping buffers may sleep. Nobody else can reach the queue now.
        if let Some(vq) = vq {
            // SAFETY: The queue was live (type invariant) and its device is reset (caller's
            // guarantee); its tokens are of the type `drain` was made for.
            unsafe { (self.drain)(vq.0) };
        }
    }
}

/// The device's queues while the driver's `probe` takes them.
pub(crate) struct Queues<'a> {
    pub(super) vqs: &'a [Option<NonNull<bindings::virtqueue>>; MAX_QUEUES],
    pub(super) slots: &'a mut [Option<Arc<Slot>>; MAX_QUEUES],
}

impl Queues<'_> {
    /// Takes queue `index` (its position in [`super::Driver::QUEUES`]) to carry buffers of type
    /// `B`. `Ok(None)`: the queue's feature was not negotiated. `EBUSY`: taken already.
    pub(crate) fn take<B: Buffer>(&mut self, index: usize) -> Result<Option<Virtqueue<B>>> {
        let (Some(vq), Some(slot)) = (self.vqs.get(index), self.slots.get_mut(index)) else {
            return Err(EINVAL);
        };
        let Some(vq) = *vq else {
            return Ok(None);
        };
        if slot.is_some() {
            return Err(EBUSY);
        }
        let new = Arc::pin_init(
            pin_init!(Slot {
                state <- new_spinlock!(SlotState { vq: Some(RawVq(vq)), in_flight: 0 }, "virtio::Slot"),
                drain: drain::<B>,
            }),
            GFP_KERNEL,
        )?;
        // INVARIANT: the queue is live and empty; only this handle queues on it, with `KBox<B>`
        // tokens, matching `drain::<B>`.
        *slot = Some(new.clone());
        Ok(Some(Virtqueue {
            slot: new,
            _buffers: PhantomData,
        }))
    }
}

/// A driver's handle on a virtqueue carrying boxed buffers of type `B`.
///
/// Adding a buffer moves its box into the queue; the device's completion gives it back. Once the
/// adapter has revoked the queue (removal, suspend), operations fail or return nothing until it
/// is armed again (resume); buffers that were queued have been dropped by then.
pub(crate) struct Virtqueue<B: Buffer> {
    slot: Arc<Slot>,
    _buffers: PhantomData<KBox<B>>,
}

impl<B: Buffer> Virtqueue<B> {
    /// Number of descriptors in the ring (0 while the queue is revoked).
    pub(crate) fn ring_size(&self) -> u32 {
        let st = self.slot.state.lock();
        match &st.vq {
            // SAFETY: A queue in the slot is live (type invariant of `Slot`).
            Some(vq) => unsafe { bindings::virtqueue_get_vring_size(vq.0.as_ptr()) },
            None => 0,
        }
    }

    /// Number of buffers queued and not yet taken back.
    pub(crate) fn in_flight(&self) -> usize {
        self.slot.state.lock().in_flight
    }

    /// Queues `buf` for the device; on failure (ring full, queue revoked, bad buffer) gives it
    /// back.
    pub(crate) fn add(&mut self, mut buf: KBox<B>) -> core::result::Result<(), (Error, KBox<B>)> {
        let inner = &*buf as *const B as usize;
        let mut one = MaybeUninit::<bindings::scatterlist>::uninit();
        let (sg, num, out) = match buf.payload() {
            Payload::Out(bytes) => {
                let start = bytes.as_ptr() as usize;
                if bytes.is_empty()
                    || start < inner
                    || start + bytes.len() > inner + core::mem::size_of::<B>()
                {
                    return Err((EINVAL, buf));
                }
                // SAFETY: `one` is valid for writes; `start` is inside a kmalloc'd box, so it has
                // a struct page in the linear map, and `len` bytes from it belong to the box.
                unsafe {
                    bindings::sg_init_one(
                        one.as_mut_ptr(),
                        start as *const core::ffi::c_void,
                        bytes.len() as u32,
                    )
                };
                (one.as_mut_ptr(), 1, true)
            }
            Payload::OutBuf(b, len) => {
                if len == 0 || len > b.bytes.len() || len > u32::MAX as usize {
                    return Err((EINVAL, buf));
                }
                // The bytes stay allocated and unchanged while the buffer is queued: `B: 'static`
                // and the queue holds the box, so the `OutBuf` is owned by the buffer, shared
                // through an `Arc` it holds, or leaked, and nothing can reach it with `&mut`.
                // SAFETY: `one` is valid for writes; by the invariant of `OutBuf` its bytes are a
                // kmalloc allocation (in the linear map) of at least `len` bytes, kept (above).
                unsafe {
                    bindings::sg_init_one(one.as_mut_ptr(), b.bytes.as_ptr().cast(), len as u32)
                };
                (one.as_mut_ptr(), 1, true)
            }
            Payload::In(w) => match w.sg() {
                Some((sg, n)) if n > 0 => (sg.as_ptr(), n, false),
                _ => return Err((EINVAL, buf)),
            },
        };
        let token = KBox::into_raw(buf);
        let mut st = self.slot.state.lock();
        let Some(vq) = st.vq.as_ref().map(|vq| vq.0) else {
            drop(st);
            // SAFETY: The queue did not take the token, so we still own the box.
            return Err((ENODEV, unsafe { KBox::from_raw(token) }));
        };
        // SAFETY: `vq` is live.
        if num > unsafe { bindings::virtqueue_get_vring_size(vq.as_ptr()) } {
            // More entries than the ring has descriptors: never fits (and the core would warn).
            drop(st);
            // SAFETY: The queue did not take the token, so we still own the box.
            return Err((EINVAL, unsafe { KBox::from_raw(token) }));
        }
        // The core copies the entries into the ring; out entries point into the box, in entries
        // describe memory the box owns until the buffer comes back.
        // SAFETY: `vq` is live, the lock serialises queue operations; `sg` has `num` initialised
        // entries (checked above, or by `DeviceWritable`); the token is the box's pointer, valid
        // until the queue gives it back; `GFP_ATOMIC` as we hold a spinlock.
        let ret = unsafe {
            if out {
                bindings::virtqueue_add_outbuf(
                    vq.as_ptr(),
                    sg,
                    num,
                    token.cast(),
                    bindings::GFP_ATOMIC,
                )
            } else {
                bindings::virtqueue_add_inbuf(
                    vq.as_ptr(),
                    sg,
                    num,
                    token.cast(),
                    bindings::GFP_ATOMIC,
                )
            }
        };
        if ret < 0 {
            drop(st);
            // SAFETY: The queue did not take the token, so we still own the box.
            return Err((Error::from_errno(ret), unsafe { KBox::from_raw(token) }));
        }
        // INVARIANT: one more buffer queued through this slot with a `KBox<B>` token.
        st.in_flight += 1;
        Ok(())
    }

    /// Notifies the device of newly queued buffers, if it wants to be.
    pub(crate) fn kick(&mut self) {
        let st = self.slot.state.lock();
        if let Some(vq) = &st.vq {
            // SAFETY: `vq` is live and the lock serialises queue operations.
            unsafe { bindings::virtqueue_kick(vq.0.as_ptr()) };
        }
    }

    /// Notifies the device even if the ring says it does not want to be (`virtqueue_notify`
    /// without `virtqueue_kick_prepare`). A device that stopped polling without turning
    /// notifications back on, as a live migration leaves the free page queue, then looks at the
    /// buffers it has not used yet.
    pub(crate) fn notify(&mut self) {
        let st = self.slot.state.lock();
        if let Some(vq) = &st.vq {
            // SAFETY: `vq` is live and the lock serialises queue operations.
            unsafe { bindings::virtqueue_notify(vq.0.as_ptr()) };
        }
    }

    /// Takes back a buffer the device has used, with the length the device says it wrote.
    pub(crate) fn get_used(&mut self) -> Option<(KBox<B>, u32)> {
        let mut len = 0u32;
        let mut st = self.slot.state.lock();
        let vq = st.vq.as_ref()?.0;
        // SAFETY: `vq` is live and the lock serialises queue operations.
        let token = unsafe { bindings::virtqueue_get_buf(vq.as_ptr(), &mut len) };
        let token = NonNull::new(token.cast::<B>())?;
        st.in_flight = st.in_flight.saturating_sub(1);
        drop(st);
        // SAFETY: Every token on this queue is a `KBox<B>` pointer (type invariant of `Slot`),
        // returned exactly once by the virtio core.
        Some((unsafe { KBox::from_raw(token.as_ptr()) }, len))
    }
}
