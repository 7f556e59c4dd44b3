//! kvm-smoke: runs a few real-mode instructions in a KVM guest and checks the exits.
//! Used inside the test host to prove that /dev/kvm is working nested KVM.
//!
//! Guest code at 0x1000 (rax=2, rbx=3): `mov dx,0x3f8; add al,bl; add al,'0'; out dx,al;
//! mov al,'\n'; out dx,al; hlt`. Expected exits: IO out '5', IO out '\n', HLT.
//! Prints `KVM_SMOKE_OK` and exits 0 on the expected exits, otherwise explains and exits 1.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::process::ExitCode;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

const GUEST_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x4000;
const CODE: [u8; 12] = [
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x00, 0xd8, // add al, bl
    0x04, b'0', // add al, '0'
    0xee, // out dx, al
    0xb0, b'\n', // mov al, '\n'
    0xee,  // out dx, al
    0xf4,  // hlt
];
/// A guest that loops would otherwise run forever.
const MAX_EXITS: usize = 16;

#[derive(Debug, PartialEq, Eq)]
enum Exit {
    IoOut { port: u16, data: Vec<u8> },
    Hlt,
    Other(String),
}

#[derive(Debug, thiserror::Error)]
enum KvmSmokeError {
    #[error("KVM call failed: {step}")]
    Kvm {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate guest memory")]
    Alloc,
}

/// Page-aligned zeroed memory that backs the guest.
struct GuestMemory {
    ptr: *mut u8,
    layout: Layout,
}

impl GuestMemory {
    fn new() -> Result<Self, KvmSmokeError> {
        let layout = Layout::from_size_align(MEM_SIZE, 0x1000).map_err(|_| KvmSmokeError::Alloc)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(KvmSmokeError::Alloc);
        }
        Ok(Self { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self, and the
        // returned borrow is tied to &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: ptr came from alloc_zeroed with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn kvm_step<T>(
    step: &'static str,
    result: Result<T, kvm_ioctls::Error>,
) -> Result<T, KvmSmokeError> {
    result.map_err(|source| KvmSmokeError::Kvm { step, source })
}

fn run_guest(memory: &mut GuestMemory) -> Result<Vec<Exit>, KvmSmokeError> {
    let kvm = kvm_step("open /dev/kvm", Kvm::new())?;
    let vm = kvm_step("KVM_CREATE_VM", kvm.create_vm())?;
    memory.as_mut_slice()[..CODE.len()].copy_from_slice(&CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: memory.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region is backed by `memory`, which the caller keeps alive until after
    // `vm` is dropped at the end of this function, and no other slot overlaps it.
    kvm_step("KVM_SET_USER_MEMORY_REGION", unsafe {
        vm.set_user_memory_region(region)
    })?;

    let mut vcpu = kvm_step("KVM_CREATE_VCPU", vm.create_vcpu(0))?;
    let mut sregs = kvm_step("KVM_GET_SREGS", vcpu.get_sregs())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    kvm_step("KVM_SET_SREGS", vcpu.set_sregs(&sregs))?;
    let mut regs = kvm_step("KVM_GET_REGS", vcpu.get_regs())?;
    regs.rip = GUEST_ADDR;
    regs.rax = 2;
    regs.rbx = 3;
    regs.rflags = 2;
    kvm_step("KVM_SET_REGS", vcpu.set_regs(&regs))?;

    let mut exits = Vec::new();
    while exits.len() < MAX_EXITS {
        let exit = match kvm_step("KVM_RUN", vcpu.run())? {
            VcpuExit::IoOut(port, data) => Exit::IoOut {
                port,
                data: data.to_vec(),
            },
            VcpuExit::Hlt => Exit::Hlt,
            other => Exit::Other(format!("{other:?}")),
        };
        let done = !matches!(exit, Exit::IoOut { .. });
        exits.push(exit);
        if done {
            break;
        }
    }
    Ok(exits)
}

fn expected() -> Vec<Exit> {
    vec![
        Exit::IoOut {
            port: 0x3f8,
            data: vec![b'5'],
        },
        Exit::IoOut {
            port: 0x3f8,
            data: vec![b'\n'],
        },
        Exit::Hlt,
    ]
}

fn main() -> ExitCode {
    let result = GuestMemory::new().and_then(|mut memory| run_guest(&mut memory));
    match result {
        Ok(exits) if exits == expected() => {
            println!("KVM_SMOKE_OK exits: io-out 0x3f8 '5', io-out 0x3f8 '\\n', hlt");
            ExitCode::SUCCESS
        }
        Ok(exits) => {
            println!("KVM_SMOKE_FAIL unexpected exits: {exits:?}");
            ExitCode::FAILURE
        }
        Err(err) => {
            let cause = std::error::Error::source(&err)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            println!("KVM_SMOKE_FAIL {err}{cause}");
            ExitCode::FAILURE
        }
    }
}
