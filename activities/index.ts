export { createSessionActivities, type SessionActivities, type ActivityDeps } from './session-activities';
export { createToolActivities, type ToolActivities } from './tool-activities';
