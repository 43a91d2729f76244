import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/**
 * Custom search attributes, kept current by the session workflow. Temporal must know them
 * before a workflow sets one: the dev server registers CUSTOM_SEARCH_ATTRIBUTES at start
 * (scripts/services.ts); docker-compose.yml lists the same names and types (it cannot import
 * this file; test/search-attributes.test.ts checks that it matches).
 */
export const SessionStatusKey = defineSearchAttributeKey('KeelSessionStatus', SearchAttributeType.KEYWORD);
export const AgentIdKey = defineSearchAttributeKey('KeelAgentId', SearchAttributeType.KEYWORD);
export const OwnerKey = defineSearchAttributeKey('KeelOwner', SearchAttributeType.KEYWORD);
export const PendingApprovalsKey = defineSearchAttributeKey('KeelPendingApprovals', SearchAttributeType.INT);
export const LastActivityKey = defineSearchAttributeKey('KeelLastActivityAt', SearchAttributeType.DATETIME);

/** Every custom search attribute above (name and type): the one list to register. */
export const CUSTOM_SEARCH_ATTRIBUTES: readonly { readonly name: string; readonly type: SearchAttributeType }[] = [SessionStatusKey, AgentIdKey, OwnerKey, PendingApprovalsKey, LastActivityKey];
