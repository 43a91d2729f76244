/**
 * The `type` of the ApplicationFailures that workflow code branches on, defined once for the
 * activities that throw them, the workflow that reads them and the API. No zod here: the
 * workflow bundle imports this module.
 */
export const FailureType = {
  /** A write refused for what it tried to write: retrying cannot fix it. */
  persistenceInvalid: 'PERSISTENCE_INVALID',
  /** An activity's input broke its contract (contracts/turn.ts): a bug in workflow code. */
  activityInputInvalid: 'ACTIVITY_INPUT_INVALID',
  /** The cancel update's validator: no turn, or not the named one, is running. */
  nothingToCancel: 'NOTHING_TO_CANCEL',
} as const;
