import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Custom search attributes; the dev server registers them at start (scripts/services.ts). */
export const SessionStatusKey = defineSearchAttributeKey('KeelSessionStatus', SearchAttributeType.KEYWORD);
export const AgentIdKey = defineSearchAttributeKey('KeelAgentId', SearchAttributeType.KEYWORD);
export const OwnerKey = defineSearchAttributeKey('KeelOwner', SearchAttributeType.KEYWORD);
export const PendingApprovalsKey = defineSearchAttributeKey('KeelPendingApprovals', SearchAttributeType.INT);
export const LastActivityKey = defineSearchAttributeKey('KeelLastActivityAt', SearchAttributeType.DATETIME);
