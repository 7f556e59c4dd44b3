//! The console worker: guest output to the output fd, input fd to the guest.

use std::fs::File;
use std::io::Read;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{ConsoleError, RX_CHUNK};
use crate::devices::virtio::descriptor::check_chain;
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::rate_limit::guest_warn;
use crate::devices::virtio::worker::{drain, poll, Interest};

/// State of the input side after an attempt to move input into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// Input was moved, or nothing was waiting.
    Ok,
    /// The guest has no receive buffers; wait for a receive-queue notification.
    NeedBuffers,
    /// The input reached end of file or failed; stop reading it.
    Closed,
}

/// Writes every pending transmit buffer to `output`; returns whether the guest sent any.
pub fn process_tx<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    output: &File,
    interrupt: &Interrupt,
) -> Result<bool, ConsoleError> {
    let max = usize::from(queue.size());
    let mut used_any = false;
    loop {
        let chain = queue.iter(mem).map_err(ConsoleError::Queue)?.next();
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        match check_chain(chain, max) {
            Ok(descs) => {
                let mut out = output;
                for d in descs.iter().filter(|d| !d.write_only && d.len > 0) {
                    let len = usize::try_from(d.len).unwrap_or(0);
                    if let Err(e) = mem.write_all_volatile_to(d.addr, &mut out, len) {
                        // The host side is gone (closed pipe): drop guest output.
                        log::debug!("virtio-console: output dropped: {e}");
                        break;
                    }
                }
            }
            Err(e) => guest_warn!("virtio-console: rejected transmit chain: {e}"),
        }
        queue.add_used(mem, head, 0).map_err(ConsoleError::Queue)?;
        used_any = true;
    }
    if used_any && queue.needs_notification(mem).map_err(ConsoleError::Queue)? {
        interrupt.signal_used();
    }
    Ok(used_any)
}

/// Moves at most one read's worth of `input` into the next receive buffer.
pub fn process_rx<M: GuestMemory, R: Read>(
    mem: &M,
    queue: &mut Queue,
    input: &mut R,
    interrupt: &Interrupt,
) -> Result<InputState, ConsoleError> {
    let max = usize::from(queue.size());
    loop {
        let chain = queue.iter(mem).map_err(ConsoleError::Queue)?.next();
        let Some(chain) = chain else {
            return Ok(InputState::NeedBuffers);
        };
        let head = chain.head_index();
        let descs = match check_chain(chain, max) {
            Ok(d) => d,
            Err(e) => {
                guest_warn!("virtio-console: rejected receive chain: {e}");
                queue.add_used(mem, head, 0).map_err(ConsoleError::Queue)?;
                continue;
            }
        };
        let writable: Vec<_> = descs.into_iter().filter(|d| d.write_only).collect();
        let capacity = writable
            .iter()
            .fold(0usize, |acc, d| {
                acc.saturating_add(usize::try_from(d.len).unwrap_or(0))
            })
            .min(RX_CHUNK);
        if capacity == 0 {
            queue.add_used(mem, head, 0).map_err(ConsoleError::Queue)?;
            continue;
        }
        let mut buf = [0u8; RX_CHUNK];
        let n = match input.read(&mut buf[..capacity]) {
            Ok(0) => {
                queue.go_to_previous_position();
                return Ok(InputState::Closed);
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                queue.go_to_previous_position();
                return Ok(InputState::Ok);
            }
            Err(e) => {
                log::debug!("virtio-console: input closed: {e}");
                queue.go_to_previous_position();
                return Ok(InputState::Closed);
            }
        };
        let mut rest = &buf[..n];
        for d in &writable {
            if rest.is_empty() {
                break;
            }
            let take = rest.len().min(usize::try_from(d.len).unwrap_or(0));
            if let Err(e) = mem.write_slice(&rest[..take], d.addr) {
                guest_warn!("virtio-console: cannot write input to the guest: {e}");
                break;
            }
            rest = &rest[take..];
        }
        let written = u32::try_from(n - rest.len()).unwrap_or(0);
        queue
            .add_used(mem, head, written)
            .map_err(ConsoleError::Queue)?;
        if queue.needs_notification(mem).map_err(ConsoleError::Queue)? {
            interrupt.signal_used();
        }
        return Ok(InputState::Ok);
    }
}

/// Everything the worker owns.
#[derive(Debug)]
pub struct ConsoleWorker<'a, M> {
    /// Guest memory.
    pub mem: &'a M,
    /// Receive queue.
    pub rx: Queue,
    /// Transmit queue.
    pub tx: Queue,
    /// Receive-queue notifications.
    pub rx_evt: EventFd,
    /// Transmit-queue notifications.
    pub tx_evt: EventFd,
    /// Guest input source.
    pub input: Option<&'a File>,
    /// Guest output sink.
    pub output: &'a File,
    /// Device interrupt.
    pub interrupt: &'a Interrupt,
}

impl<M: GuestMemory> ConsoleWorker<'_, M> {
    /// Runs until `kill` fires.
    pub fn run(mut self, kill: &EventFd) -> Result<(), ConsoleError> {
        let mut input_open = self.input.is_some();
        let mut rx_buffers = true;
        // Linux's virtio_console posts receive buffers before it marks a console port
        // connected, and discards whatever arrives in between. Input is held back until the
        // guest has written to the console, which it can only do once the port is set up.
        let mut guest_ready = process_tx(self.mem, &mut self.tx, self.output, self.interrupt)?;
        loop {
            let mut interests = vec![
                Interest::read(kill),
                Interest::read(&self.rx_evt),
                Interest::read(&self.tx_evt),
            ];
            let watch_input = match self.input {
                Some(f) if input_open && rx_buffers && guest_ready => {
                    interests.push(Interest::read(f));
                    true
                }
                _ => false,
            };
            let ready = poll(&interests, -1).map_err(ConsoleError::Poll)?;
            if ready[0].readable {
                return Ok(());
            }
            if ready[2].readable {
                drain(&self.tx_evt);
                guest_ready |= process_tx(self.mem, &mut self.tx, self.output, self.interrupt)?;
            }
            if ready[1].readable {
                drain(&self.rx_evt);
                rx_buffers = true;
            }
            if watch_input && (ready[3].readable || ready[3].hangup) {
                if let Some(mut f) = self.input {
                    match process_rx(self.mem, &mut self.rx, &mut f, self.interrupt)? {
                        InputState::Ok => {}
                        InputState::NeedBuffers => rx_buffers = false,
                        InputState::Closed => input_open = false,
                    }
                }
            }
        }
    }
}
