/**
 * NVMe 1.4 constants: controller register offsets and fields, admin and NVM opcodes,
 * status codes, feature identifiers, log page identifiers.
 */
import { VfioUserError, Errno } from '../../errors.js';

export const NVME_VENDOR = 0x4e58; // "NX"
export const NVME_DEVICE = 0x0002;

/** controller registers (BAR0) */
export const Reg = {
  CAP: 0x00, // u64
  VS: 0x08,
  INTMS: 0x0c,
  INTMC: 0x10,
  CC: 0x14,
  CSTS: 0x1c,
  NSSR: 0x20,
  AQA: 0x24,
  ASQ: 0x28, // u64
  ACQ: 0x30, // u64
  CMBLOC: 0x38,
  CMBSZ: 0x3c,
} as const;

/** start of the doorbells (CAP.DSTRD = 0: 4-byte stride) */
export const DOORBELL_BASE = 0x1000;

/**
 * CAP (a 64-bit register) fields, as bit positions and flags of the whole value (bigint):
 * MQES maximum queue entries (0's based), CQR contiguous queues required, TO ready timeout
 * (500 ms units), DSTRD doorbell stride (4 << DSTRD bytes), CSS command sets (bit 37: NVM),
 * MPSMIN/MPSMAX memory page sizes (4 KiB << n).
 */
export const CAP = {
  MQES_SHIFT: 0n,
  CQR: 1n << 16n,
  TO_SHIFT: 24n,
  DSTRD_SHIFT: 32n,
  CSS_NVM: 1n << 37n,
  MPSMIN_SHIFT: 48n,
  MPSMAX_SHIFT: 52n,
} as const;

export const CC = {
  EN: 1,
  CSS_SHIFT: 4,
  MPS_SHIFT: 7,
  AMS_SHIFT: 11,
  SHN_SHIFT: 14,
  IOSQES_SHIFT: 16,
  IOCQES_SHIFT: 20,
} as const;

export const CSTS = { RDY: 1, CFS: 2, SHST_SHIFT: 2, SHST_NORMAL: 0, SHST_OCCURRING: 1, SHST_COMPLETE: 2 } as const;

export const AdminOp = {
  DELETE_SQ: 0x00,
  CREATE_SQ: 0x01,
  GET_LOG_PAGE: 0x02,
  DELETE_CQ: 0x04,
  CREATE_CQ: 0x05,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT: 0x0c,
  KEEP_ALIVE: 0x18,
  DOORBELL_BUFFER_CONFIG: 0x7c,
} as const;

export const IoOp = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  WRITE_ZEROES: 0x08,
  DSM: 0x09,
} as const;

/** Status Code Type << 8 | Status Code; the DNR bit is added on errors a retry cannot fix. */
export const Status = {
  SUCCESS: 0x000,
  INVALID_OPCODE: 0x001,
  INVALID_FIELD: 0x002,
  CID_CONFLICT: 0x003,
  DATA_TRANSFER_ERROR: 0x004,
  INTERNAL_ERROR: 0x006,
  ABORT_REQUESTED: 0x007,
  ABORT_SQ_DELETED: 0x008,
  INVALID_NAMESPACE: 0x00b,
  COMMAND_SEQUENCE_ERROR: 0x00c,
  INVALID_SGL_SEG_DESCRIPTOR: 0x00d,
  INVALID_NUM_SGL_DESCRIPTORS: 0x00e,
  DATA_SGL_LENGTH_INVALID: 0x00f,
  SGL_DESCRIPTOR_TYPE_INVALID: 0x011,
  INVALID_PRP_OFFSET: 0x013,
  LBA_OUT_OF_RANGE: 0x080,
  CAPACITY_EXCEEDED: 0x081,
  // command specific (SCT 1)
  CQ_INVALID: 0x100,
  INVALID_QID: 0x101,
  INVALID_QUEUE_SIZE: 0x102,
  ABORT_LIMIT_EXCEEDED: 0x103,
  AER_LIMIT_EXCEEDED: 0x105,
  INVALID_INTERRUPT_VECTOR: 0x108,
  INVALID_LOG_PAGE: 0x109,
  INVALID_QUEUE_DELETION: 0x10c,
  FEATURE_NOT_SAVEABLE: 0x10d,
  FEATURE_NOT_CHANGEABLE: 0x10e,
} as const;
/** Do Not Retry, bit 14 of the 15-bit status field */
export const DNR = 0x4000;

export const Feature = {
  ARBITRATION: 0x01,
  POWER_MANAGEMENT: 0x02,
  TEMPERATURE_THRESHOLD: 0x04,
  ERROR_RECOVERY: 0x05,
  VOLATILE_WRITE_CACHE: 0x06,
  NUMBER_OF_QUEUES: 0x07,
  INTERRUPT_COALESCING: 0x08,
  INTERRUPT_VECTOR_CONFIG: 0x09,
  WRITE_ATOMICITY: 0x0a,
  ASYNC_EVENT_CONFIG: 0x0b,
} as const;

export const LogPage = { ERROR: 0x01, SMART: 0x02, FIRMWARE_SLOT: 0x03 } as const;

export const Identify = { NAMESPACE: 0x00, CONTROLLER: 0x01, ACTIVE_NS_LIST: 0x02, NS_DESCRIPTORS: 0x03 } as const;

/** SGL descriptor types (upper nibble of byte 15) */
export const Sgl = { DATA_BLOCK: 0x0, BIT_BUCKET: 0x1, SEGMENT: 0x2, LAST_SEGMENT: 0x3 } as const;

export const SQE_SIZE = 64;
export const CQE_SIZE = 16;

/**
 * Thrown inside command handlers: completes the command with that status (code
 * VFU_NVME_STATUS, errno EIO where it reaches a vfio-user reply, as a bad migration state).
 */
export class NvmeStatusError extends VfioUserError {
  readonly status: number;
  constructor(status: number, message = `NVMe status 0x${status.toString(16)}`) {
    super('VFU_NVME_STATUS', message, Errno.EIO);
    this.name = 'NvmeStatusError';
    this.status = status;
  }
}
