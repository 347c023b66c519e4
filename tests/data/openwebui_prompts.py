"""The structure of Open WebUI's built-in prompt templates, abridged, as test data for task
prompt detection (issue 13, item 20). Open WebUI fills them in and sends each as ONE user
message; the task ones quote the chat inside ``<chat_history>``, while the RAG template wraps
a file's retrieved text in ``<context>`` and is put in front of the user's real message.

Source: open-webui/open-webui, ``backend/open_webui/config.py`` (v0.6 series; newer releases
keep the same texts in a prompts module), constants named on each template below. Guideline
lists are cut down to their first line; the headings, tags and placeholders are as published.
``{{MESSAGES:END:n}}``, ``{{CONTEXT}}``, ``{{QUERY}}`` and ``{{prompt}}`` are Open WebUI's
placeholders; ``fill`` substitutes them the way Open WebUI does.
"""
from __future__ import annotations

# DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE
TITLE = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "📉 Stock Market Trends" },
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""

# DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE
TAGS = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)

### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

# DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE
FOLLOW_UPS = """### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user's point of view, directed to the assistant.
### Output:
JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }
### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

# DEFAULT_QUERY_GENERATION_PROMPT_TEMPLATE (web search and retrieval queries)
QUERIES = """### Task:
Analyze the chat history to determine the necessity of generating search queries, in the given language. By default, **prioritize generating 1-3 broad and relevant search queries** unless it is absolutely certain that no additional information is required.

### Guidelines:
- Respond **EXCLUSIVELY** with a JSON object. Any form of extra commentary, explanation, or additional text is strictly prohibited.

### Output:
Strictly return in JSON format:
{
  "queries": ["query1", "query2"]
}

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>
"""

# DEFAULT_AUTOCOMPLETE_GENERATION_PROMPT_TEMPLATE
AUTOCOMPLETE = """### Task:
You are an autocompletion system. Continue the text in `<text>` based on the **completion type** in `<type>` and the given language.

### **Output Rules**:
- Respond only in JSON format: `{ "text": "<your_completion>" }`.

---
### Context:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>
<type>{{TYPE}}</type>
<text>{{PROMPT}}</text>
#### Output:
"""

# DEFAULT_EMOJI_GENERATION_PROMPT_TEMPLATE (voice-call mode). It has neither the
# ``### Task:`` heading nor a chat history: not recognisable as a task by its structure.
EMOJI = """Your task is to reflect the speaker's likely facial expression through a fitting emoji. Interpret emotions from the message and reflect their facial expression using fitting, diverse emojis (e.g., 😊, 😢, 😡, 😱).

Message: ```{{prompt}}```"""

# DEFAULT_RAG_TEMPLATE: put in front of the user's message when a file is attached.
RAG = """### Task:
Respond to the user query using the provided context, incorporating inline citations in the format [source_id] **only when the <source_id> tag is explicitly provided** in the context.

### Guidelines:
- If you don't know the answer, clearly state that.

### Output:
Provide a clear and direct response to the user's query, including inline citations in the format [source_id] only when the <source_id> tag is present in the context.

<context>
{{CONTEXT}}
</context>

<user_query>
{{QUERY}}
</user_query>
"""

TASK_TEMPLATES = {"title": TITLE, "tags": TAGS, "follow_ups": FOLLOW_UPS, "queries": QUERIES,
                  "autocomplete": AUTOCOMPLETE}


def fill(template: str, messages=(), context: str = "", query: str = "") -> str:
    """The template as Open WebUI sends it: the chat as ``ROLE: text`` lines, the retrieved
    context and the user's query in their places."""
    chat = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)
    text = template
    for placeholder in ("{{MESSAGES:END:2}}", "{{MESSAGES:END:6}}"):
        text = text.replace(placeholder, chat)
    return (text.replace("{{CONTEXT}}", context).replace("{{QUERY}}", query)
            .replace("{{prompt}}", query).replace("{{TYPE}}", "General")
            .replace("{{PROMPT}}", query))
