export { sessionWorkflow } from './session';
export { releaseHealthWorkflow, releaseWatchWorkflow } from './release-health';
export { webhookDeliveryWorkflow } from './webhook-delivery';
export { openapiImportWorkflow } from './openapi-import';
