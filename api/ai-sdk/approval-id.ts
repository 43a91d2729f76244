// The `approvalId` of a `tool-approval-request` is Keel's approval reference (api/approval-ref.ts).
export { approvalRefOf as approvalIdOf, parseApprovalRef as parseApprovalId } from '../approval-ref';
