/* chat.h - chat prompt templates: ChatML (SmolLM2, Qwen2) and Llama-3 headers.
 * The family is chosen from the vocabulary (see sp_tokenizer_chat_template) or by the user. */
#ifndef SP_CHAT_H
#define SP_CHAT_H

#include <stddef.h>

typedef enum sp_chat_family {
    SP_CHAT_FAMILY_NONE = 0,    /* raw prompt, no template */
    SP_CHAT_FAMILY_CHATML,      /* <|im_start|>role\n...<|im_end|>\n */
    SP_CHAT_FAMILY_LLAMA3,      /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
} sp_chat_family;

/* Family by name ("chatml", "llama3", "none"); -1 when unknown. */
int sp_chat_family_from_name(const char *name);
const char *sp_chat_family_name(sp_chat_family f);

/* Render a single-turn conversation (optional system message, one user message) followed by the
 * assistant header, ready to be tokenized with special-token parsing on. BOS is not included: the
 * tokenizer adds it when the vocabulary asks for it. Returns the length written (excluding the
 * NUL), or -ENOSPC when cap is too small (then nothing useful is in buf), or -EINVAL for NONE. */
int sp_chat_render(sp_chat_family f, const char *system, const char *user, char *buf, size_t cap);

/* Bytes sp_chat_render needs for these messages (upper bound, including the NUL). */
size_t sp_chat_render_size(const char *system, const char *user);

#endif
