export { createStreamReplyActivities, type StreamReplyActivities } from './llm/stream-reply';
export { createPersistenceActivities, type PersistenceActivities } from './persistence';
export { createToolActivities, type ToolActivities } from './tool-activities';
export { createReleaseActivities, type ReleaseActivities } from './release-activities';
export { createEscalationActivities, type EscalationActivities } from './escalation';
