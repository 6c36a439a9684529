"""Function-calling rows written from published schemas (xLAM/APIGen, NousResearch hermes-function-calling-v1,
raw ToolACE): no real rows of these datasets are here (see tests/data/real/function_calling/SOURCES.md), so
each constant says which schema it follows."""

from __future__ import annotations

import json

# Salesforce/xlam-function-calling-60k (APIGen): ``query``, and ``tools`` / ``answers`` as JSON strings; a tool's
# ``parameters`` maps each parameter to {type, description, default}, optional ones typed "..., optional". The first
# row below is the dataset card's first example (two parallel calls of one tool).
XLAM_ROWS = [
    {
        "id": 0,
        "query": "Where can I find live giveaways for beta access and games?",
        "answers": '[{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}}, '
        '{"name": "live_giveaways_by_type", "arguments": {"type": "game"}}]',
        "tools": '[{"name": "live_giveaways_by_type", "description": "Retrieve live giveaways from the GamerPower '
        'API based on the specified type.", "parameters": {"type": {"description": "The type of giveaways to '
        'retrieve (e.g., game, loot, beta).", "type": "str", "default": "game"}}}]',
    },
    {
        "id": 1,
        "query": "Find the first 5 results for 'pizza' near zip 10001.",
        "answers": '[{"name": "search_places", "arguments": {"query": "pizza", "zip": "10001", "limit": 5}}]',
        "tools": '[{"name": "search_places", "description": "Search places.", "parameters": {"query": {"description": '
        '"Search terms.", "type": "str", "default": ""}, "zip": {"description": "ZIP code.", "type": "str", '
        '"default": ""}, "limit": {"description": "Max results.", "type": "int, optional", "default": 10}}}, '
        '{"name": "get_weather", "description": "Weather.", "parameters": {"city": {"description": "City.", '
        '"type": "str", "default": ""}}}]',
    },
]

# NousResearch/hermes-function-calling-v1 (func-calling.json): ShareGPT turns (system / human / gpt / tool) and a
# ``tools`` column; the system prompt repeats the tools inside <tools></tools> (after a sentence that itself names
# "<tools> </tools>"), calls are {"name", "arguments"} JSON inside <tool_call> tags, results <tool_response> blocks.
HERMES_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_camera_live_feed",
            "description": "Retrieves the live feed from a specified security camera.",
            "parameters": {
                "type": "object",
                "properties": {
                    "camera_id": {"type": "string", "description": "The unique identifier for the camera."},
                    "stream_quality": {"type": "string", "enum": ["720p", "1080p", "4k"]},
                },
                "required": ["camera_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "record_camera_feed",
            "description": "Records the live feed from a specified security camera.",
            "parameters": {
                "type": "object",
                "properties": {"camera_id": {"type": "string"}, "duration_minutes": {"type": "integer"}},
                "required": ["camera_id", "duration_minutes"],
            },
        },
    },
]
HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    f"values to plug into functions.\n<tools>\n{json.dumps(HERMES_TOOLS)}\n</tools>\nFor each function call return "
    "a json object with function name and arguments within <tool_call> </tool_call> tags with the following "
    'schema:\n<tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</tool_call>\n'
)
HERMES_ROW = {
    "id": "85f6c398-69c7-4df2-aed1-29d614a93a26",
    "conversations": [
        {"from": "system", "value": HERMES_SYSTEM},
        {"from": "human", "value": "Show me the front door camera in 1080p and record it for 30 minutes."},
        {
            "from": "gpt",
            "value": '<tool_call>\n{"name": "get_camera_live_feed", "arguments": {"camera_id": "front_door", '
            '"stream_quality": "1080p"}}\n</tool_call>\n<tool_call>\n{"name": "record_camera_feed", "arguments": '
            '{"camera_id": "front_door", "duration_minutes": 30}}\n</tool_call>\n',
        },
        {
            "from": "tool",
            "value": '<tool_response>\n{"name": "get_camera_live_feed", "content": {"stream_url": '
            '"rtsp://cams/front_door_1080p"}}\n</tool_response>\n<tool_response>\n{"name": "record_camera_feed", '
            '"content": {"status": "recording", "duration_minutes": 30}}\n</tool_response>\n',
        },
        {
            "from": "gpt",
            "value": "The live feed is at rtsp://cams/front_door_1080p and a 30-minute recording started.",
        },
    ],
    "tools": json.dumps(HERMES_TOOLS),
    "category": "Home Automation",
    "subcategory": "Security Camera Management",
    "task": "View and Manage Security Camera Feeds",
}

# Team-ACE/ToolACE (data.json): ``system`` with the tools as a JSON list (BFCL-style "dict" parameters), ShareGPT
# turns from user / assistant / tool, calls as Python-style ``[Func(a=1, b="x")]``; API names may hold spaces (the
# dataset's first row calls ``Market Trends API``).
TOOLACE_TOOLS = [
    {
        "name": "Market Trends API",
        "description": "Get the latest market trends and relevant news for a specified country and trend type.",
        "parameters": {
            "type": "dict",
            "properties": {
                "trend_type": {"description": "Trend type.", "type": "string", "default": ""},
                "country": {
                    "description": "The country for which to get trends.",
                    "type": "string",
                    "default": "us",
                },
            },
            "required": ["trend_type"],
        },
        "required": None,
    },
    {
        "name": "newAddress",
        "description": "Generates a new Ethereum address that can be used to send or receive funds.",
        "parameters": {
            "type": "dict",
            "properties": {"password": {"description": "The password for the new address", "type": "string"}},
            "required": ["password"],
        },
        "required": None,
    },
]
TOOLACE_ROW = {
    "system": "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\nHere is a "
    f"list of functions in JSON format that you can invoke:\n{json.dumps(TOOLACE_TOOLS)}. \nShould you decide to "
    "return the function call(s). \nPut it in the format of [func1(params_name=params_value, params_name2="
    "params_value2...), func2(params)]\n\nNO other text MUST be included. \n",
    "conversations": [
        {
            "from": "user",
            "value": "What's happening in the market right now? Get me the top market trends in the US.",
        },
        {"from": "assistant", "value": '[Market Trends API(trend_type="MARKET_INDEXES", country="us")]'},
        {
            "from": "tool",
            "value": '[{"name": "Market Trends API", "results": {"trends": [{"name": "S&P 500"}]}}]',
        },
        {"from": "assistant", "value": "The top market index in the US right now is the S&P 500."},
        {"from": "user", "value": "Also the gainers and a new wallet address with password 'hunter2'."},
        {
            "from": "assistant",
            "value": '[Market Trends API(trend_type="GAINERS", country="us"), newAddress(password="hunter2")]',
        },
    ],
}
