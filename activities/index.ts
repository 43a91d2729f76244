export { createSessionActivities, type SessionActivities, type ActivityDeps } from './session-activities';
