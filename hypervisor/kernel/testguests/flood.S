/* Console test guest (ktest console_flood_*). Entered in 32-bit flat protected mode, paging
 * off, interrupts off, at its load address; EBX = mode | (n << 8).
 *   mode 0  quiet: spin forever without exits (the node stops it)
 *   mode 1  flood the 16550 UART (rep outsb, 4 KiB per exit) forever
 *   mode 2  flood the virtio-console transmit queue (8 chains of 4 KiB per notify) forever
 *   mode 3  both, alternating
 *   mode 4  healthy: n * 65536 rounds of xorshift32 from 1, print "compute done XXXXXXXX"
 *           (the state in hex) and power off
 * Position independent: EBP holds the load address. Uses guest RAM at 1 MiB for the
 * virtqueue and the 4 KiB text buffer. */
    .set VIRTIO, 0xd0000000
    .set DESC,   0x100000
    .set AVAIL,  0x100080
    .set USED,   0x100100
    .set BUF,    0x101000
    .code32
    .text
    .globl _start
_start:
    call 1f
1:  pop ebp
    sub ebp, offset 1b - _start
    lea esp, [ebp - 16]
    mov eax, ebx
    and eax, 0xff
    cmp eax, 4
    je compute
    cmp eax, 0
    je quiet
    mov edi, eax                 /* EDI = flood mode for the whole run */
    call fill_buffer
    test edi, 2
    jz 2f
    call virtio_init
2:  lea esi, [ebp + msg_flood - _start]
    call puts
flood:
    test edi, 1
    jz 3f
    mov dx, 0x3f8
    mov esi, BUF
    mov ecx, 4096
    rep outsb
3:  test edi, 2
    jz flood
    /* publish all 8 descriptors (each the whole buffer) and notify queue 1: 32 KiB per exit */
    movzx eax, word ptr [AVAIL + 2]
    mov ecx, 8
10: mov edx, eax
    and edx, 7
    mov word ptr [AVAIL + 4 + edx*2], dx
    inc eax
    loop 10b
    mov word ptr [AVAIL + 2], ax
    mov dword ptr [VIRTIO + 0x50], 1
    jmp flood

quiet:
    add eax, 1
    jmp quiet

compute:
    mov ecx, ebx
    shr ecx, 8
    shl ecx, 16
    mov eax, 1
4:  mov edx, eax                 /* xorshift32: x ^= x << 13; x ^= x >> 17; x ^= x << 5 */
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    dec ecx
    jnz 4b
    mov ebx, eax
    lea esi, [ebp + msg_done - _start]
    call puts
    mov ecx, 8                   /* EBX in hex, most significant nibble first */
5:  rol ebx, 4
    mov eax, ebx
    and eax, 0xf
    movzx eax, byte ptr [ebp + hexdigits - _start + eax]
    mov dx, 0x3f8
    out dx, al
    loop 5b
    mov al, 10
    out dx, al
poweroff:
    cli
    hlt
    jmp poweroff

/* The virtio-console at VIRTIO: reset, ACK|DRIVER, VERSION_1, FEATURES_OK, transmitq (1) with
 * 8 entries at DESC/AVAIL/USED, DRIVER_OK. */
virtio_init:
    mov dword ptr [VIRTIO + 0x70], 0
    mov dword ptr [VIRTIO + 0x70], 1
    mov dword ptr [VIRTIO + 0x70], 3
    mov dword ptr [VIRTIO + 0x24], 1
    mov dword ptr [VIRTIO + 0x20], 1      /* feature bit 32: VERSION_1 */
    mov dword ptr [VIRTIO + 0x24], 0
    mov dword ptr [VIRTIO + 0x20], 0
    mov dword ptr [VIRTIO + 0x70], 0xb
    mov dword ptr [VIRTIO + 0x30], 1
    mov dword ptr [VIRTIO + 0x38], 8
    mov dword ptr [VIRTIO + 0x80], DESC
    mov dword ptr [VIRTIO + 0x84], 0
    mov dword ptr [VIRTIO + 0x90], AVAIL
    mov dword ptr [VIRTIO + 0x94], 0
    mov dword ptr [VIRTIO + 0xa0], USED
    mov dword ptr [VIRTIO + 0xa4], 0
    mov dword ptr [VIRTIO + 0x44], 1
    mov dword ptr [VIRTIO + 0x70], 0xf
    mov word ptr [AVAIL + 0], 1           /* VRING_AVAIL_F_NO_INTERRUPT */
    mov word ptr [AVAIL + 2], 0
    xor ecx, ecx                          /* descriptors 0..7: BUF, 4096 bytes, device-readable */
11: mov dword ptr [DESC + ecx*8], BUF
    mov dword ptr [DESC + ecx*8 + 4], 0
    mov dword ptr [DESC + ecx*8 + 8], 4096
    mov dword ptr [DESC + ecx*8 + 12], 0
    add ecx, 2
    cmp ecx, 16
    jb 11b
    ret

/* BUF = 32 lines of "flood flood ... flo" + "\n" (128 bytes each). Keeps EDI. */
fill_buffer:
    xor ecx, ecx                 /* offset 0..4095 */
6:  mov eax, ecx
    and eax, 127
    cmp eax, 127
    je 8f
    xor edx, edx
    mov ebx, 6
    div ebx                      /* EDX = column mod 6 */
    movzx eax, byte ptr [ebp + word_flood - _start + edx]
    jmp 9f
8:  mov eax, 10
9:  mov byte ptr [BUF + ecx], al
    inc ecx
    cmp ecx, 4096
    jb 6b
    ret

/* puts: ESI = NUL-terminated string → COM1 */
puts:
    mov dx, 0x3f8
7:  lodsb
    test al, al
    jz 1f
    out dx, al
    jmp 7b
1:  ret

word_flood: .ascii "flood "
hexdigits:  .ascii "0123456789abcdef"
msg_flood:  .asciz "flood guest: flooding the console\n"
msg_done:   .asciz "compute done "
