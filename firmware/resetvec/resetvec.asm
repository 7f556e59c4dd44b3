; krun reset-vector firmware.
;
; One binary for every launch mode (plain VM, SEV, SEV-ES, SEV-SNP): its bytes are measured,
; so the PSP-model run (plain KVM) and the hardware run must load identical bytes, and the
; mode is found at run time from the SEV_STATUS MSR. The contract with the VMM (addresses,
; parameter block, what memory must be validated) is in README.md; the parameter block
; offsets below must match src/params.rs.
;
; Build: nasm -f bin -o resetvec.bin resetvec.asm   (see build.sh)

%define IMAGE_SIZE      0x2000
%define IMAGE_BASE      (0x100000000 - IMAGE_SIZE)      ; 0xFFFFE000
%define JT_GPA          IMAGE_BASE                      ; page 0: SEV-ES AP jump table
%define STACK_TOP       (IMAGE_BASE + 0x1000)           ; firmware stack: top of page 0
%define PB_GPA          (IMAGE_BASE + 0x1000)           ; page 1 starts with the parameter block
%define CS16_BASE       0xFFFF0000                      ; CS base at reset (BSP and SEV-ES APs)

; parameter block fields (offsets from PB_GPA)
%define PB_KERNEL_ENTRY 0x20
%define PB_BOOT_PARAMS  0x28
%define PB_PT_BASE      0x30
%define PB_PT_SIZE      0x38
%define PB_CC_BLOB      0x40
%define CC_SECRETS_PHYS (PB_CC_BLOB + 0x08)
%define CC_SECRETS_LEN  (PB_CC_BLOB + 0x10)
%define CC_CPUID_PHYS   (PB_CC_BLOB + 0x18)
%define CC_CPUID_LEN    (PB_CC_BLOB + 0x20)

; page-table region layout (pages from pt_base)
%define PT_PML4         0x0000
%define PT_PDPT         0x1000
%define PT_GHCB_PT      0x2000          ; 4 KiB table that maps the GHCB page unencrypted
%define PT_GHCB         0x3000          ; the GHCB page (SEV-ES only)
%define PT_PD0          0x4000          ; one page directory per GiB from here
%define PT_FIXED_PAGES  4

; selectors (0x10/0x18 are what the Linux 64-bit boot protocol requires)
%define SEL_CODE32      0x08
%define SEL_CODE64      0x10
%define SEL_DATA        0x18
%define SEL_CODE16      0x20
%define SEL_DATA16      0x28

%define MSR_EFER        0xC0000080
%define MSR_GHCB        0xC0010130
%define MSR_SEV_STATUS  0xC0010131

; SEV_STATUS bits, kept in EBP/RBP for the whole run
%define ST_SEV          1
%define ST_ES           2
%define ST_SNP          4

; GHCB MSR protocol (GHCB specification, section 2.3.1)
%define GHCB_INFO_SEV_INFO_RESP 0x001
%define GHCB_INFO_SEV_INFO_REQ  0x002
%define GHCB_INFO_CPUID_REQ     0x004
%define GHCB_INFO_CPUID_RESP    0x005
%define GHCB_INFO_AP_HOLD_REQ   0x006
%define GHCB_INFO_AP_HOLD_RESP  0x007
%define GHCB_INFO_TERM_REQ      0x100
%define GHCB_TERM_SET           0xA     ; reason-code set of this firmware

; GHCB page fields (struct ghcb, arch/x86/include/asm/svm.h)
%define GHCB_SW_EXIT_CODE       0x390
%define GHCB_SW_EXIT_INFO_1     0x398
%define GHCB_SW_EXIT_INFO_2     0x3A0
%define GHCB_VALID_BITMAP       0x3F0
%define GHCB_PROTOCOL_VERSION   0xFFA
%define GHCB_USAGE              0xFFC
%define SVM_EXIT_CPUID          0x72
%define SVM_VMGEXIT_AP_JUMP_TABLE 0x80000005

; struct boot_params
%define BP_CC_BLOB_ADDRESS      0x13C
%define BP_E820_ENTRIES         0x1E8
%define BP_E820_TABLE           0x2D0
%define E820_MAX                128
%define E820_RAM                1

; fatal error codes (README.md "Errors")
%define ERR_PARAMS      0x01
%define ERR_PT_SIZE     0x02
%define ERR_CBIT        0x03
%define ERR_PVALIDATE   0x04
%define ERR_GHCB_MSR    0x05
%define ERR_JUMP_TABLE  0x06
%define ERR_SNP_PARAMS  0x07
%define ERR_VC          0x08
%define ERR_E820        0x09
%define ERR_EXCEPTION   0x80            ; | vector
%define FATAL_PORT      0xF5

%define ABS(x)          ((x) - $$ + IMAGE_BASE)

%macro VMGEXIT 0
        db 0xF3, 0x0F, 0x01, 0xD9       ; rep vmmcall
%endmacro
%macro PVALIDATE 0
        db 0xF2, 0x0F, 0x01, 0xFF
%endmacro

        org IMAGE_BASE

; ---------------------------------------------------------------------------------------
; Page 0 (0xFFFFE000): the SEV-ES AP jump table. The guest kernel writes its trampoline
; (u16 ip, u16 cs) at offset 0; the upper half of the page is the firmware's stack.
; Measured as zeros.
; ---------------------------------------------------------------------------------------
        times 0x1000 db 0

; ---------------------------------------------------------------------------------------
; Page 1 (0xFFFFF000): parameter block, code, tables, reset vectors.
; ---------------------------------------------------------------------------------------
param_block:
        db "KRUNRVFW"                   ; 0x00 magic
        dd 1                            ; 0x08 layout version
        dd param_block_end - param_block ; 0x0C parameter block size
        dd IMAGE_SIZE                   ; 0x10 image size
        dw ABS(reset_bsp) - CS16_BASE       ; 0x14 BSP IP (CS base 0xFFFF0000)
        dw ABS(reset_ap) - CS16_BASE       ; 0x16 SEV-ES AP IP (CS base 0xFFFF0000)
        dq JT_GPA                       ; 0x18 AP jump table GPA
        dq 0                            ; 0x20 kernel 64-bit entry GPA        (VMM)
        dq 0                            ; 0x28 boot_params GPA                (VMM)
        dq 0                            ; 0x30 page-table region GPA          (VMM)
        dq 0                            ; 0x38 page-table region size         (VMM)
cc_blob:                                ; 0x40 struct cc_blob_sev_info
        dd 0x45444d41                   ;      magic "AMDE"
        dw 1                            ;      version
        dw 0                            ;      reserved
        dq 0                            ;      secrets_phys                   (VMM, SNP)
        dd 0                            ;      secrets_len                    (VMM, SNP)
        dd 0                            ;      rsvd1
        dq 0                            ;      cpuid_phys                     (VMM, SNP)
        dd 0                            ;      cpuid_len                      (VMM, SNP)
        dd 0                            ;      rsvd2
        times 0x80 - ($ - param_block) db 0
param_block_end:

; ---------------------------------------------------------------------------------------
; 16-bit entry. BSP: reset vector. AP: SEV-ES only (its measured VMSA starts it here); in
; other modes the kernel starts APs with INIT-SIPI at its own trampoline and they never
; run this code.
; ---------------------------------------------------------------------------------------
        bits 16
bsp16:
        cli
        xor edi, edi                    ; EDI = 0: BSP
        jmp short common16
ap16:
        cli
        mov edi, 1                      ; EDI = 1: AP
common16:
        cld
        o32 lgdt [cs:ABS(gdtr) - CS16_BASE]
        o32 lidt [cs:ABS(idtr32) - CS16_BASE]
        mov eax, cr0
        and eax, 0x9FFFFFFF             ; clear CD and NW: caches on
        or al, 1                        ; PE
        mov cr0, eax
        jmp dword SEL_CODE32:start32

; ---------------------------------------------------------------------------------------
; 32-bit protected mode, paging off. Without paging every data access of an SEV guest is
; private, so parameter block, CPUID page and page-table writes need no C-bit here.
; ---------------------------------------------------------------------------------------
        bits 32
start32:
        mov ax, SEL_DATA
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax
        mov esp, STACK_TOP
        xor ebp, ebp                    ; until probed: plain VM (fatal32 uses the port)

        ; SEV_STATUS is never intercepted in SEV-ES/SNP guests (no #VC); a VM without SEV
        ; may raise #GP, which gp32 turns into a zero result.
        mov ecx, MSR_SEV_STATUS
probe_rdmsr:
        rdmsr
probe_done:
        and eax, ST_SEV | ST_ES | ST_SNP
        mov ebp, eax
        test edi, edi
        jnz ap32

        ; --- BSP: check the parameters the VMM patched in ---
        mov eax, [PB_GPA + PB_KERNEL_ENTRY]
        or eax, [PB_GPA + PB_KERNEL_ENTRY + 4]
        jz bad_params
        mov eax, [PB_GPA + PB_BOOT_PARAMS]
        test eax, eax
        jz bad_params
        cmp dword [PB_GPA + PB_BOOT_PARAMS + 4], 0
        jne bad_params
        cmp eax, IMAGE_BASE - 0x1000
        ja bad_params
        mov ebx, [PB_GPA + PB_PT_BASE]
        test ebx, 0xFFF
        jnz bad_params
        test ebx, ebx
        jz bad_params
        cmp dword [PB_GPA + PB_PT_BASE + 4], 0
        jne bad_params
        cmp dword [PB_GPA + PB_PT_SIZE + 4], 0
        jne bad_params
        mov eax, [PB_GPA + PB_PT_SIZE]
        test eax, 0xFFF
        jnz bad_params
        cmp eax, (PT_FIXED_PAGES + 4) * 0x1000
        jb bad_pt_size
        add eax, ebx
        jc bad_params
        cmp eax, IMAGE_BASE
        ja bad_params

        ; --- C-bit position: ESI = C-bit mask, high dword (the low dword is always 0) ---
        xor esi, esi
        test ebp, ST_SEV
        jz have_cbit
        test ebp, ST_SNP
        jnz snp_cbit
        mov eax, 0x8000001F
        xor ecx, ecx
        cpuid                           ; SEV: plain CPUID; SEV-ES: #VC -> vc32
        mov eax, ebx
        jmp cbit_from_ebx

        ; SNP: the hypervisor's CPUID answers are not trusted; use the PSP-checked CPUID
        ; page, and check the CC blob the kernel will read.
snp_cbit:
        mov edx, [PB_GPA + CC_CPUID_PHYS]
        test edx, edx
        jz bad_snp_params
        test edx, 0xFFF
        jnz bad_snp_params
        cmp dword [PB_GPA + CC_CPUID_PHYS + 4], 0
        jne bad_snp_params
        cmp dword [PB_GPA + CC_CPUID_LEN], 0x1000
        jb bad_snp_params
        mov eax, [PB_GPA + CC_SECRETS_PHYS]
        test eax, eax
        jz bad_snp_params
        test eax, 0xFFF
        jnz bad_snp_params
        cmp dword [PB_GPA + CC_SECRETS_PHYS + 4], 0
        jne bad_snp_params
        cmp dword [PB_GPA + CC_SECRETS_LEN], 0x1000
        jne bad_snp_params
        mov ecx, [edx]                  ; snp_cpuid_table.count
        cmp ecx, 64
        ja bad_cbit
        lea eax, [edx + 16]             ; fn[0]: eax_in, ecx_in, xcr0_in, xss_in, eax, ebx...
.search:
        test ecx, ecx
        jz bad_cbit
        cmp dword [eax], 0x8000001F
        jne .next
        cmp dword [eax + 4], 0
        jne .next
        mov eax, [eax + 28]             ; ebx
        jmp cbit_from_ebx
.next:
        add eax, 48
        dec ecx
        jmp .search

cbit_from_ebx:
        and eax, 0x3F
        cmp eax, 32
        jb bad_cbit
        cmp eax, 51
        ja bad_cbit
        lea ecx, [eax - 32]
        mov esi, 1
        shl esi, cl
have_cbit:
        mov ebx, [PB_GPA + PB_PT_BASE]  ; CPUID (or the #VC path) clobbered EBX

        ; --- identity map of the first 4 GiB with 2 MiB pages (more is added in 64-bit) ---
        xor eax, eax
        lea edi, [ebx + PT_PML4]
        mov ecx, 2 * 1024               ; PML4 and PDPT
        rep stosd
        lea eax, [ebx + PT_PDPT + 3]    ; present, writable
        mov [ebx + PT_PML4], eax
        mov [ebx + PT_PML4 + 4], esi
        lea eax, [ebx + PT_PD0 + 3]
        lea edi, [ebx + PT_PDPT]
        mov ecx, 4
.pdpt:
        mov [edi], eax
        mov [edi + 4], esi
        add eax, 0x1000
        add edi, 8
        loop .pdpt
        lea edi, [ebx + PT_PD0]
        mov eax, 0x83                   ; present, writable, 2 MiB page
        mov ecx, 4 * 512
.pd:
        mov [edi], eax
        mov [edi + 4], esi
        add eax, 0x200000
        add edi, 8
        loop .pd

        mov cr3, ebx
        mov eax, cr4
        or eax, 0x20                    ; PAE
        mov cr4, eax
        mov ecx, MSR_EFER
        rdmsr
        or eax, 0x100                   ; LME (SVME and the rest stay as they are)
        wrmsr
        mov eax, cr0
        or eax, 0x80000000              ; PG: long mode becomes active
        mov cr0, eax
        jmp SEL_CODE64:start64

; --- 32-bit error exits ---
bad_params:
        mov al, ERR_PARAMS
        jmp fatal32
bad_pt_size:
        mov al, ERR_PT_SIZE
        jmp fatal32
bad_cbit:
        mov al, ERR_CBIT
        jmp fatal32
bad_snp_params:
        mov al, ERR_SNP_PARAMS
        jmp fatal32
bad_ghcb_msr32:
        mov al, ERR_GHCB_MSR
        jmp fatal32

; AL = error code. SEV-ES/SNP: GHCB MSR termination request (an OUT would raise #VC);
; otherwise one byte to FATAL_PORT, then halt for good.
fatal32:
        cli
        movzx esi, al
        test ebp, ST_ES
        jnz .ghcb
        out FATAL_PORT, al
.halt:
        hlt
        jmp .halt
.ghcb:
        mov eax, esi
        shl eax, 16
        or eax, GHCB_INFO_TERM_REQ | (GHCB_TERM_SET << 12)
        xor edx, edx
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        jmp .ghcb

; #GP: only the SEV_STATUS probe may fault; it reads as 0 (no SEV). The probe runs with
; nothing on the stack, so the frame is dropped and execution continues after the RDMSR
; without IRET (KVM's instruction emulator cannot do a protected-mode IRET).
gp32:
        cmp dword [esp + 4], ABS(probe_rdmsr)
        jne .unexpected
        mov esp, STACK_TOP
        xor eax, eax
        xor edx, edx
        jmp probe_done
.unexpected:
        mov al, ERR_EXCEPTION | 13
        jmp fatal32

; #VC: serve CPUID through the GHCB MSR protocol (leaf in EAX, subleaf 0), like OVMF SEC.
; Anything else is fatal. A #VC proves SEV-ES is active, so fatal32 must use the GHCB.
vc32:
        or ebp, ST_SEV | ST_ES
        cmp dword [esp], SVM_EXIT_CPUID
        jne .unexpected
        push esi
        mov esi, eax
        xor ebx, ebx
        call msr_cpuid                  ; EAX
        push eax
        inc ebx
        call msr_cpuid                  ; EBX
        push eax
        inc ebx
        call msr_cpuid                  ; ECX
        push eax
        inc ebx
        call msr_cpuid                  ; EDX
        mov edx, eax
        pop ecx
        pop ebx
        pop eax
        pop esi
        add esp, 4                      ; error code
        add dword [esp], 2              ; skip CPUID (0F A2)
        iretd
.unexpected:
        mov al, ERR_VC
        jmp fatal32

; ESI = leaf, EBX = register (0 EAX .. 3 EDX) -> EAX = value. Clobbers ECX, EDX.
msr_cpuid:
        mov eax, ebx
        shl eax, 30
        or eax, GHCB_INFO_CPUID_REQ
        mov edx, esi
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        rdmsr
        mov ecx, eax
        and ecx, 0xFFF
        cmp ecx, GHCB_INFO_CPUID_RESP
        jne bad_ghcb_msr32
        mov eax, edx
        ret

; ---------------------------------------------------------------------------------------
; AP path (32-bit). Only SEV-ES/SNP guests reach it (measured VMSA). It writes no guest
; RAM: it reads the jump table the kernel filled in (u16 ip, u16 cs), and while that is
; empty it waits in AP Reset Hold until the next INIT-SIPI.
; ---------------------------------------------------------------------------------------
ap32:
        test ebp, ST_ES
        jz .park
.poll:
        mov eax, [JT_GPA]
        test eax, eax
        jnz .to_real
        mov eax, GHCB_INFO_AP_HOLD_REQ
        xor edx, edx
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        rdmsr
        and eax, 0xFFF
        cmp eax, GHCB_INFO_AP_HOLD_RESP
        jne bad_ghcb_msr32
        jmp .poll                       ; woken (or spurious): look at the table again
.park:
        ; No SEV-ES: nothing to do here; a later INIT-SIPI from the kernel restarts the AP.
        cli
        hlt
        jmp .park
.to_real:
        lidt [idtr_real]
        jmp SEL_CODE16:(ABS(pm16) - CS16_BASE)

        bits 16
pm16:
        mov ax, SEL_DATA16              ; real-mode compatible limits in the hidden parts
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax
        mov eax, cr0
        and al, 0xFE                    ; PE off (PG is off already)
        mov cr0, eax
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax
        jmp far [cs:JT_GPA - CS16_BASE] ; CS still has base 0xFFFF0000 here

; ---------------------------------------------------------------------------------------
; 64-bit long mode. EBP = SEV status, EBX = pt_base, ESI = C-bit mask high dword.
; Addresses below 4 GiB are put in registers with 32-bit moves (zero-extended): a 32-bit
; displacement or immediate would be sign-extended.
; ---------------------------------------------------------------------------------------
        bits 64
        default rel
start64:
        lidt [idtr64]
        mov ax, SEL_DATA
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, STACK_TOP
        mov ebp, ebp                    ; zero the upper halves
        mov ebx, ebx
        mov r15d, esi
        shl r15, 32                     ; R15 = C-bit mask
        mov r12d, PB_GPA
        mov r13d, [r12 + PB_BOOT_PARAMS]

        ; --- highest RAM address in the e820 table -> R14 = GiB to map (at least 4) ---
        movzx ecx, byte [r13 + BP_E820_ENTRIES]
        cmp ecx, E820_MAX
        ja bad_e820
        lea rdi, [r13 + BP_E820_TABLE]
        mov r14d, 4
.scan:
        test ecx, ecx
        jz .scanned
        cmp dword [rdi + 16], E820_RAM
        jne .scan_next
        mov rax, [rdi]
        add rax, [rdi + 8]
        jc bad_e820
        mov rdx, rax
        shr rdx, 30
        test eax, 0x3FFFFFFF
        jz .whole
        inc rdx
.whole:
        cmp rdx, r14
        cmova r14, rdx
.scan_next:
        add rdi, 20
        dec ecx
        jmp .scan
.scanned:
        cmp r14, 512
        ja bad_e820
        lea rax, [r14 + PT_FIXED_PAGES]
        shl rax, 12
        cmp rax, [r12 + PB_PT_SIZE]
        ja bad_pt_size64

        ; --- map GiB 4 .. R14-1 ---
        mov ecx, 4
.gib:
        cmp rcx, r14
        jae .mapped
        mov rdi, rcx
        shl rdi, 12
        lea rdi, [rbx + rdi + PT_PD0]   ; the PD for this GiB
        lea rax, [rdi + 3]
        or rax, r15
        mov [rbx + PT_PDPT + rcx * 8], rax
        mov rax, rcx
        shl rax, 30
        or rax, 0x83
        or rax, r15
        mov edx, 512
.gib_pd:
        mov [rdi], rax
        add rax, 0x200000
        add rdi, 8
        dec edx
        jnz .gib_pd
        inc ecx
        jmp .gib
.mapped:

        test ebp, ST_SNP
        jnz snp_setup
        test ebp, ST_ES
        jnz es_setup
        jmp enter_kernel

; ---------------------------------------------------------------------------------------
; SEV-ES (not SNP): tell the hypervisor where the AP jump table is (AP_JUMP_TABLE SET, a
; full-GHCB NAE event), so the kernel's GET finds the page the APs read. The GHCB page is
; mapped unencrypted through a 4 KiB table; its 2 MiB neighbourhood stays encrypted.
; ---------------------------------------------------------------------------------------
es_setup:
        ; GHCB protocol version: SEV information request
        mov eax, GHCB_INFO_SEV_INFO_REQ
        xor edx, edx
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        rdmsr
        mov ecx, eax
        and ecx, 0xFFF
        cmp ecx, GHCB_INFO_SEV_INFO_RESP
        jne bad_ghcb_msr64
        mov ecx, edx
        shr ecx, 16                     ; max version
        and edx, 0xFFFF                 ; min version
        cmp ecx, 2
        jbe .vmax
        mov ecx, 2
.vmax:
        cmp ecx, edx
        jb bad_ghcb_msr64
        test ecx, ecx
        jz bad_ghcb_msr64
        mov r8d, ecx                    ; version to use

        lea r9, [rbx + PT_GHCB]         ; GHCB GPA
        mov r10, r9
        and r10, ~0x1FFFFF              ; its 2 MiB region
        lea rdi, [rbx + PT_GHCB_PT]
        mov rax, r10
        or rax, 3
        or rax, r15
        mov edx, 512
.pt:
        mov [rdi], rax
        add rax, 0x1000
        add rdi, 8
        dec edx
        jnz .pt
        mov rax, r9
        sub rax, r10
        shr rax, 12
        lea rdi, [rbx + PT_GHCB_PT + rax * 8]
        lea rax, [r9 + 3]               ; GHCB: no C-bit
        mov [rdi], rax
        mov rax, r10
        shr rax, 21                     ; PDE index over all PDs (they are contiguous)
        lea rdi, [rbx + PT_PD0 + rax * 8]
        lea rax, [rbx + PT_GHCB_PT + 3]
        or rax, r15
        mov [rdi], rax
        mov rax, cr3
        mov cr3, rax                    ; flush the old 2 MiB translation

        mov rdi, r9
        xor eax, eax
        mov ecx, 512
        rep stosq
        mov dword [r9 + GHCB_SW_EXIT_CODE], SVM_VMGEXIT_AP_JUMP_TABLE
        mov qword [r9 + GHCB_SW_EXIT_INFO_1], 0 ; SET
        mov eax, JT_GPA
        mov [r9 + GHCB_SW_EXIT_INFO_2], rax
        ; valid bitmap: bit = offset / 8 -> sw_exit_code 114, info_1 115, info_2 116
        mov byte [r9 + GHCB_VALID_BITMAP + 14], 0x1C
        mov [r9 + GHCB_PROTOCOL_VERSION], r8w
        mov dword [r9 + GHCB_USAGE], 0
        mov rax, r9
        mov rdx, r9
        shr rdx, 32
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        mov eax, [r9 + GHCB_SW_EXIT_INFO_1]
        test eax, eax
        jnz bad_jump_table
        ; The kernel will use this RAM as private memory: write back and drop the lines
        ; cached under the shared mapping (no coherency between the two without SME_COHERENT).
        mov ecx, 64
.flush:
        clflush [r9]
        add r9, 64
        dec ecx
        jnz .flush
        mfence
        jmp enter_kernel

; ---------------------------------------------------------------------------------------
; SNP: validate every e820 RAM page (PVALIDATE; pages already validated by
; SNP_LAUNCH_UPDATE report "no update", which is fine), except [0xC0000, 0x100000), which
; Linux validates itself (probe_roms); then hand the kernel the CC blob.
; ---------------------------------------------------------------------------------------
snp_setup:
        movzx r11d, byte [r13 + BP_E820_ENTRIES]
        lea r10, [r13 + BP_E820_TABLE]
.entry:
        test r11d, r11d
        jz .validated
        cmp dword [r10 + 16], E820_RAM
        jne .next
        mov rdi, [r10]
        mov rsi, [r10 + 8]
        add rsi, rdi                    ; end (overflow was checked in the scan)
        add rdi, 0xFFF
        and rdi, ~0xFFF                 ; whole pages only
        and rsi, ~0xFFF
        mov r8, rsi
        mov eax, 0xC0000
        cmp r8, rax
        cmova r8, rax
        call validate_range             ; [start, min(end, 0xC0000))
        mov r8, rsi
        mov eax, 0x100000
        cmp rdi, rax
        cmovb rdi, rax
        call validate_range             ; [max(start, 0x100000), end)
.next:
        add r10, 20
        dec r11d
        jmp .entry
.validated:
        mov eax, PB_GPA + PB_CC_BLOB
        mov [r13 + BP_CC_BLOB_ADDRESS], eax
        jmp enter_kernel

; Validate [RDI, R8), both page aligned; RDI is advanced. 2 MiB at a time where aligned;
; a 2 MiB attempt on 4 KiB RMP entries (FAIL_SIZEMISMATCH) is redone page by page.
; Clobbers RAX, RCX, RDX, R9.
validate_range:
        xor r9d, r9d                    ; below R9: 4 KiB steps only
.loop:
        cmp rdi, r8
        jae .done
        cmp rdi, r9
        jb .small
        test edi, 0x1FFFFF
        jnz .small
        lea rax, [rdi + 0x200000]
        cmp rax, r8
        ja .small
        mov rax, rdi
        mov ecx, 1                      ; 2 MiB
        mov edx, 1                      ; validate
        PVALIDATE
        test eax, eax                   ; CF=1 (already validated) is fine
        jz .big_ok
        cmp eax, 6                      ; FAIL_SIZEMISMATCH
        jne bad_pvalidate
        lea r9, [rdi + 0x200000]
        jmp .loop
.big_ok:
        add rdi, 0x200000
        jmp .loop
.small:
        mov rax, rdi
        xor ecx, ecx                    ; 4 KiB
        mov edx, 1
        PVALIDATE
        test eax, eax
        jnz bad_pvalidate
        add rdi, 0x1000
        jmp .loop
.done:
        ret

; ---------------------------------------------------------------------------------------
; Linux 64-bit boot protocol: CS = 0x10, DS/ES/SS = 0x18, interrupts off, RSI = boot_params.
; ---------------------------------------------------------------------------------------
enter_kernel:
        mov rax, [r12 + PB_KERNEL_ENTRY]
        mov esi, r13d
        xor ebx, ebx
        xor ecx, ecx
        xor edx, edx
        xor edi, edi
        xor ebp, ebp
        xor r8d, r8d
        xor r9d, r9d
        xor r10d, r10d
        xor r11d, r11d
        xor r12d, r12d
        xor r13d, r13d
        xor r14d, r14d
        xor r15d, r15d
        jmp rax

; --- 64-bit error exits ---
bad_e820:
        mov al, ERR_E820
        jmp fatal64
bad_pt_size64:
        mov al, ERR_PT_SIZE
        jmp fatal64
bad_ghcb_msr64:
        mov al, ERR_GHCB_MSR
        jmp fatal64
bad_jump_table:
        mov al, ERR_JUMP_TABLE
        jmp fatal64
bad_pvalidate:
        mov al, ERR_PVALIDATE
        jmp fatal64

fatal64:
        cli
        movzx esi, al
        test ebp, ST_ES
        jnz .ghcb
        out FATAL_PORT, al
.halt:
        hlt
        jmp .halt
.ghcb:
        mov eax, esi
        shl eax, 16
        or eax, GHCB_INFO_TERM_REQ | (GHCB_TERM_SET << 12)
        xor edx, edx
        mov ecx, MSR_GHCB
        wrmsr
        VMGEXIT
        jmp .ghcb

; ---------------------------------------------------------------------------------------
; Exception stubs: push the vector, report it as fatal.
; ---------------------------------------------------------------------------------------
        bits 32
        align 8
stubs32:
%assign i 0
%rep 32
        push byte i
        jmp near common32
        align 8, db 0xCC
%assign i i+1
%endrep
common32:
        pop eax
        or al, ERR_EXCEPTION
        jmp fatal32

        bits 64
        align 8
stubs64:
%assign i 0
%rep 32
        push byte i
        jmp near common64
        align 8, db 0xCC
%assign i i+1
%endrep
common64:
        pop rax
        or al, ERR_EXCEPTION
        jmp fatal64

; ---------------------------------------------------------------------------------------
; Descriptor tables. Read-only: accessed bits are preset so the CPU never writes them.
; ---------------------------------------------------------------------------------------
        align 8
gdt:
        dq 0
        dq 0x00CF9B000000FFFF           ; 0x08 code, 32-bit, flat
        dq 0x00AF9B000000FFFF           ; 0x10 code, 64-bit
        dq 0x00CF93000000FFFF           ; 0x18 data, flat
        dq 0xFF009BFF0000FFFF           ; 0x20 code, 16-bit, base 0xFFFF0000, limit 64 KiB
        dq 0x000093000000FFFF           ; 0x28 data, 16-bit, base 0, limit 64 KiB
gdt_end:

        align 8
idt32:
%assign i 0
%rep 32
%if i == 13
%define H ABS(gp32)
%elif i == 29
%define H ABS(vc32)
%else
%define H (ABS(stubs32) + 8 * i)
%endif
        dw (H) & 0xFFFF, SEL_CODE32, 0x8E00, (H) >> 16
%undef H
%assign i i+1
%endrep
idt32_end:

        align 16
idt64:
%assign i 0
%rep 32
%define H (ABS(stubs64) + 8 * i)
        dw (H) & 0xFFFF, SEL_CODE64, 0x8E00, (H) >> 16
        dd 0, 0
%undef H
%assign i i+1
%endrep
idt64_end:

        align 4
gdtr:
        dw gdt_end - gdt - 1
        dd ABS(gdt)
        align 4
idtr32:
        dw idt32_end - idt32 - 1
        dd ABS(idt32)
        align 4
idtr_real:
        dw 0x3FF
        dd 0
        align 8
idtr64:
        dw idt64_end - idt64 - 1
        dq ABS(idt64)

; ---------------------------------------------------------------------------------------
; Reset vectors: BSP at 0xFFFFFFF0, SEV-ES AP at 0xFFFFFFF8 (CS base 0xFFFF0000).
; ---------------------------------------------------------------------------------------
        times IMAGE_SIZE - 16 - ($ - $$) db 0xCC
        bits 16
reset_bsp:
        jmp near bsp16
        times 8 - ($ - reset_bsp) db 0xCC
reset_ap:
        jmp near ap16
        times 8 - ($ - reset_ap) db 0xCC
