/**
 * Protocol limits shared by the API's validators and the docs. The API may lower them by
 * setting (see config/settings.ts) but never raise them past what these schemas accept.
 */
export const MAX_CONTENT_CHARS = 10_000;
export const MAX_FRAME_BYTES = 32_768;
export const MAX_PAGE_SIZE = 100;
